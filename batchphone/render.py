"""What the CLI shows: the progress bar, log set-up, the closing summary and error lines.

Two audiences, one choice (``--log-format``): on a terminal, a tqdm bar, console log lines and
a summary table; for machines (``json``, or ``auto`` off a terminal), stderr carries only JSON
lines: log events, a ``summary`` event at the end and an ``error`` event for an error exit, and
no bar. Only the CLI imports this module; it imports tqdm and structlog lazily.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batchphone.files.atomic import write_private
from batchphone.models import FINAL_STATUSES, RESUME_HINT, RowResult, Status, Summary
from batchphone.options import LogFormat, flagged

__all__ = [
    "RESUME_HINT",
    "Output",
    "TqdmProgress",
    "configure_logging",
    "duration",
    "json_logs",
    "summary_lines",
    "write_summary_json",
]


def json_logs(log_format: str) -> bool:
    """True when stderr is for machines: ``json``, or ``auto`` and stderr is not a terminal."""
    return log_format == LogFormat.JSON or (
        log_format == LogFormat.AUTO and not sys.stderr.isatty()
    )


class TqdmProgress:
    """A tqdm bar on stderr: rows done, counts by status, and an ETA the budget can keep.

    During a 429 pause no row advances, so nothing would redraw the bar: a daemon thread
    redraws it every ``TICK`` seconds until the pause is over, so the countdown moves and then
    goes. The lock keeps it and the event loop's calls from touching the bar at once.
    """

    TICK = 1.0

    def __init__(self) -> None:
        self._bar: Any = None
        self._counts: Counter[str] = Counter()
        self._calls = 0
        self._finished = 0
        self._calls_per_second: float | None = None
        self._paused_until = 0.0
        self._last_refresh = 0.0
        self._lock = threading.Lock()
        self._ticker: threading.Thread | None = None
        self._closed = threading.Event()

    def start(self, total: int, *, done: int, calls_per_second: float | None) -> None:
        from tqdm import tqdm

        self._closed.clear()
        self._calls_per_second = calls_per_second
        self._bar = tqdm(
            total=total,
            initial=done,
            unit="row",
            file=sys.stderr,
            dynamic_ncols=True,
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]",
        )

    def advance(self, result: RowResult) -> None:
        with self._lock:
            self._counts[result.status.value] += 1
            self._finished += 1
            self._calls += 1 if result.attempts else 0
            if self._bar is None:
                return
            self._bar.update(1)
            now = time.monotonic()
            if now - self._last_refresh > 0.5:
                self._last_refresh = now
                self._bar.set_postfix_str(self._postfix(), refresh=False)

    def paused(self, seconds: float, *, calls_per_second: float | None = None) -> None:
        with self._lock:
            self._paused_until = time.monotonic() + seconds
            if calls_per_second is not None and self._calls_per_second is not None:
                self._calls_per_second = calls_per_second  # the lowered budget the run keeps
            if self._bar is None:
                return
            self._bar.set_postfix_str(self._postfix())
            if self._ticker is None or not self._ticker.is_alive():
                self._ticker = threading.Thread(
                    target=self._tick, name="batchphone-progress", daemon=True
                )
                self._ticker.start()

    def _tick(self) -> None:
        """Redraw the bar while a pause lasts, then once more without it."""
        while not self._closed.wait(self.TICK):
            with self._lock:
                if self._bar is None:
                    return
                self._bar.set_postfix_str(self._postfix())
                if time.monotonic() >= self._paused_until:
                    return

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            if self._bar is not None:
                self._bar.set_postfix_str(self._postfix(), refresh=False)
                self._bar.close()
                self._bar = None
        if self._ticker is not None:
            self._ticker.join()

    def _postfix(self) -> str:
        parts = [f"{status} {n}" for status, n in self._counts.most_common(4)]
        remaining = self._bar.total - self._bar.n if self._bar is not None else 0
        pause = self._paused_until - time.monotonic()
        if self._calls_per_second and self._finished and remaining > 0:
            # the budget, not the observed rate, bounds the rest: a run that started with a
            # burst of local rows would otherwise promise far too early an end; and no call
            # starts before a 429 pause ends
            calls_left = remaining * self._calls / self._finished
            seconds = max(pause, 0.0) + calls_left / self._calls_per_second
            parts.append(f"budget ETA {duration(seconds)}")
        if pause > 0:
            parts.append(f"PAUSED by API 429: {pause:.0f}s")
        return ", ".join(parts)


def duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3700`` -> ``1h01m``."""
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"


class _TqdmStream:
    """A file for structlog that writes through tqdm, so log lines do not garble the bar."""

    def write(self, text: str) -> int:
        from tqdm import tqdm

        if text.strip():
            tqdm.write(text.rstrip("\n"), file=sys.stderr)
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()


#: Events a person at a terminal reads in the summary table: their console lines would repeat it.
TABLE_EVENTS = frozenset({"run_started", "run_finished"})
#: Events the CLI says itself, also with ``--quiet`` (``Output.note``): never twice.
NOTED_EVENTS = frozenset({"emulator_users"})
#: the fields of a library event that may name an option (``no_lookup=True``): shown as flags
WORDED_FIELDS = ("event", "message", "stopped_reason", "next_step", "hint")


def configure_logging(
    log_format: str, quiet: bool, *, hide: tuple[str, ...] = (), debug: bool = False
) -> None:
    """structlog for the library's events: JSON lines or console lines on stderr.

    ``hide``: fields left out of every event (the path of a report in a temporary folder).
    On the console, ``run_started``/``run_finished`` are left out (the summary table says it
    all) unless ``debug``; machines get every event.
    """
    import structlog

    machines = json_logs(log_format)

    def drop(_logger: Any, _name: str, event: Any) -> Any:
        name = event.get("event")
        if name in NOTED_EVENTS or (name in TABLE_EVENTS and not (machines or debug)):
            raise structlog.DropEvent
        for key in hide:
            event.pop(key, None)
        for key in WORDED_FIELDS:  # the library names options; a command line shows flags
            if isinstance(event.get(key), str):
                event[key] = flagged(event[key])
        return event

    renderer: Any = (
        structlog.processors.JSONRenderer()
        if machines
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            drop,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.WARNING if quiet else logging.INFO
        ),
        logger_factory=structlog.PrintLoggerFactory(file=_TqdmStream()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


def summary_lines(summary: Summary, command: str, budget: str) -> list[str]:
    """The summary table a person reads at the end of a command."""
    lines = [f"{command}: {summary.input_rows} rows in {summary.elapsed_s:.1f}s"]
    for status in Status:
        if summary.counts.get(status):
            lines.append(f"  {status.value:<14} {summary.counts[status]:>9}")
    if command != "validate":
        lines.append(f"  {'API calls':<14} {summary.requests:>9}")
        if summary.rate_limited:
            lines.append(f"  {'rate limited':<14} {summary.rate_limited:>9}")
    if summary.resumed_rows:
        lines.append(
            f"  resumed: {summary.resumed_rows} rows already final; {summary.sent_now} sent now; "
            f"API calls this time: {summary.requests}"
        )
    if summary.planned_calls is not None:
        who = "a run" if command == "plan" else f"the {command}"
        lines.append(
            f"  {who} needs about {summary.planned_calls} API calls: "
            f"at least {duration(summary.planned_s or 0.0)} at a budget of {budget}"
        )
    if summary.result_path:
        lines.append(f"  results: {summary.result_path}")
        if summary.short_path:
            lines.append(f"  short sheet: {summary.short_path}")
    elif summary.not_valid is not None:
        lines.extend(_not_valid_lines(summary))
    lines.extend(f"  moved aside: {path}" for path in summary.moved_aside)
    if summary.stopped_reason:
        lines.append(f"  stopped: {summary.stopped_reason}")
    if summary.next_step:
        lines.append(f"  next: {summary.next_step}")
    return lines


def _not_valid_lines(summary: Summary) -> list[str]:
    shown = summary.not_valid or ()
    if not shown:
        return ["  every row is valid; no file written (--out FILE writes the report)"]
    count = sum(summary.counts.values()) - summary.counts.get(Status.VALID, 0)
    head = f"first {len(shown)} of {count}"
    lines = [f"  rows not valid ({head}; no file written: --out FILE writes every row):"]
    lines += [
        f"    row {row.line or row.row:<6} {row.status:<10} {row.reason:<22} {row.explanation}"
        for row in shown
    ]
    return lines


def error_document(message: str, exit_code: int) -> dict[str, Any]:
    """The ``--summary-json`` document of a command that ended with an error before a summary."""
    return {
        "input_rows": None,
        "counts": {},
        "requests": None,
        "rate_limited": None,
        "elapsed_s": None,
        "exit_code": exit_code,
        "result_path": None,
        "error": message,
    }


def write_summary_json(path: Path, document: Mapping[str, Any]) -> None:
    """Write the summary for schedulers: atomically, mode 0600 (``OSError`` if it cannot)."""
    write_private(path, (json.dumps(document, indent=2) + "\n").encode())


class Output:
    """The CLI's own lines on stderr: JSON events for machines, plain text for people."""

    def __init__(self, *, json_mode: bool, quiet: bool = False, debug: bool = False) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        self.debug = debug

    def _event(self, event: str, level: str, fields: Mapping[str, Any]) -> None:
        stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        record = {"event": event, "level": level, "timestamp": stamp, **fields}
        sys.stderr.write(json.dumps(record, default=str) + "\n")
        sys.stderr.flush()

    def error(self, message: str, exit_code: int) -> None:
        """An error that ends the command: one line, or one ``error`` event."""
        if self.json_mode:
            self._event("error", "error", {"message": message, "exit_code": exit_code})
        else:
            sys.stderr.write(f"batchphone: error: {message}\n")
            sys.stderr.flush()

    def note(self, event: str, text: str, **fields: Any) -> None:
        """A line the user must see even with ``--quiet`` (where the emulator's users came from)."""
        if self.json_mode:
            self._event(event, "info", {"message": text, **fields})
        else:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    def summary(self, summary: Summary, command: str, budget: str) -> None:
        """The closing summary: a table, or one ``summary`` event (nothing with ``--quiet``)."""
        if self.quiet:
            return
        if self.json_mode:
            document = summary.to_json()
            if not self.debug:
                # a stop reason may quote a row (a canary mismatch names the user and phones):
                # logs carry no personal data, the --summary-json file (0600) keeps it
                document.pop("stopped_reason", None)
            if summary.next_step:
                document["hint"] = summary.next_step
            self._event("summary", "info", {"command": command, **document})
        else:
            sys.stderr.write("\n".join(summary_lines(summary, command, budget)) + "\n")
            sys.stderr.flush()


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def status_lines(status: Any, now: float | None = None) -> list[str]:
    """``batchphone status`` for a person: a ``status.RunStatus`` as a few lines."""
    now = time.time() if now is None else now
    lines = [
        f"{status.journal}: {status.command or '?'} of {status.input_name or '?'} "
        f"(sha256 {(status.input_sha256 or '?')[:12]}) on project {status.project_id or '-'}"
        + (f" ({status.base_url})" if status.base_url else ""),
        f"  {'started':<12} {_when(status.started_ts)}",
    ]
    of = f" of {status.input_rows}" if status.input_rows is not None else ""
    lines.append(f"  {'rows final':<12} {status.rows_final}{of}")
    shown = {s.value for s in Status}
    names = [s.value for s in Status] + sorted(set(status.counts) - shown)
    final = {s.value for s in FINAL_STATUSES}
    for name in names:
        if status.counts.get(name) and name in final:
            lines.append(f"    {name:<14} {status.counts[name]:>9}")
    # not final (unsettled: calls in flight, or whose answer was lost): listed apart, with
    # what a person does about them, so they do not read as part of the rows final
    open_rows = sum(n for name, n in status.counts.items() if name not in final)
    if open_rows:
        lines.append(f"  {'not final':<12} {open_rows}")
        for name in names:
            if status.counts.get(name) and name not in final:
                lines.append(f"    {name:<14} {status.counts[name]:>9}")
    unsettled = status.counts.get(Status.UNSETTLED.value, 0)
    after = None
    if unsettled and not status.locked:
        result = status.journal.removesuffix(".journal")
        lines.append(
            f"  {'':<12} unsettled: the call went out and no answer was recorded (in flight "
            "at a stop, or lost), so it may have been applied"
        )
        after = (
            f"  {'next':<12} rerun the same command to read those users back and go on, or "
            f"`batchphone undo {result} --out ...` to roll the run back (it restores those "
            "that were applied)"
        )
    ago = f" ({duration(max(now - status.last_call_ts, 0.0))} ago)" if status.last_call_ts else ""
    lines.append(f"  {'API calls':<12} {status.calls}, last at {_when(status.last_call_ts)}{ago}")
    if status.locked:
        lines.append(f"  {'lock':<12} held by {status.holder or 'a process'}: the run is live")
    else:
        lines.append(f"  {'lock':<12} not held: no run is writing it now")
    left = max((status.input_rows or 0) - status.rows_final, 0)
    if status.eta_s is not None and not left:
        lines.append(f"  {'ETA':<12} none: every row is final")
    elif status.eta_s is not None:
        when = "" if status.locked else " (once resumed: rerun the same command)"
        lines.append(
            f"  {'ETA':<12} at least {duration(status.eta_s)} for {left} rows left "
            f"at a budget of {status.rate}{when}"
        )
    else:
        lines.append(f"  {'ETA':<12} unknown: the input was not found (--input PATH)")
    if after is not None:
        lines.append(after)
    return lines
