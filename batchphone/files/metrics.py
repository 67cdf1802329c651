"""``--metrics-file``: a command's figures in Prometheus text format, for node_exporter.

node_exporter's textfile collector reads every ``*.prom`` file of its folder at each scrape. The
file is replaced atomically (a temp file whose name does not end in ``.prom``, then a rename),
so a scrape never sees half of one. It is written at every exit, also 2 and 130, and keeps the
time of the last successful run from the file it replaces, so an alert can ask for "no
successful sync for 26 h" whatever the last run did.

Mode 0644, unlike the other files batchphone writes: node_exporter usually runs as its own user
and could not read a 0600 file (a missing file looks like a sync that never succeeded). The file
holds counts and times only: no login id, phone, path or message.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from batchphone.files.atomic import write_atomic
from batchphone.models import Status, Summary

__all__ = ["LAST_SUCCESS", "previous_success", "render_metrics", "write_metrics"]

#: The gauge an alert on stale syncs watches.
LAST_SUCCESS = "batchphone_last_success_timestamp_seconds"


def previous_success(path: Path, command: str) -> float | None:
    """The last success of ``command`` recorded in the metrics file at ``path`` (``None``:
    none yet; a ``validate`` that went through is no successful ``run``).

    Read with prometheus-client's own parser; a file that is missing, unreadable or not in the
    text format counts as none (a run never fails over its metrics of yesterday).
    """
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = path.read_text(encoding="utf-8")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == LAST_SUCCESS and sample.labels.get("command") == command:
                    return float(sample.value)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return None


def render_metrics(
    summary: Summary | None,
    *,
    command: str,
    exit_code: int,
    last_success: float | None,
    now: float | None = None,
) -> bytes:
    """The metrics file's content: ``summary``'s figures (none when the command ended before
    it had one), its exit code and end time, and the last success time.

    ``last_success``: the previous file's; replaced by this run's end when it completed.
    """
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    ended = summary.finished_ts if summary is not None else (time.time() if now is None else now)
    if summary is not None and summary.completed:
        last_success = ended
    registry = CollectorRegistry()

    def gauge(name: str, text: str, value: float) -> None:
        metric = Gauge(name, text, ["command"], registry=registry)
        metric.labels(command).set(value)

    gauge("batchphone_exit_code", "Exit code of the last run (0, 1, 2, 3 or 130).", exit_code)
    gauge("batchphone_last_run_timestamp_seconds", "When the last run ended (Unix time).", ended)
    if last_success is not None:
        gauge(
            LAST_SUCCESS,
            "When a run last went through to the end: exit 0 or 1 (Unix time).",
            last_success,
        )
    if summary is not None:
        rows = Gauge(
            "batchphone_rows",
            "Rows of the input by their status at the end of the last run.",
            ["command", "status"],
            registry=registry,
        )
        for status in Status:  # every status, zeros too: a series never just disappears
            rows.labels(command, status.value).set(summary.counts.get(status, 0))
        gauge("batchphone_input_rows", "Rows in the input of the last run.", summary.input_rows)
        gauge("batchphone_api_calls", "API calls the last run made.", summary.requests)
        gauge(
            "batchphone_rate_limited_calls",
            "Calls of the last run answered 429 (rate limited).",
            summary.rate_limited,
        )
        gauge("batchphone_elapsed_seconds", "How long the last run took.", summary.elapsed_s)
    data: bytes = generate_latest(registry)
    return data


def write_metrics(
    path: str | os.PathLike[str],
    summary: Summary | None,
    *,
    command: str,
    exit_code: int | None = None,
    now: float | None = None,
) -> None:
    """Replace the metrics file at ``path`` (atomically, mode 0644; ``OSError`` if it cannot).

    ``summary``: the command's, or ``None`` when it ended before it had one (then
    ``exit_code`` says how it ended). From Python: ``write_metrics(path, summary, command="run")``.
    """
    path = Path(path)
    code = exit_code if exit_code is not None else (summary.exit_code if summary else 1)
    data = render_metrics(
        summary,
        command=command,
        exit_code=code,
        last_success=previous_success(path, command),
        now=now,
    )
    write_atomic(path, data, mode=0o644)
