"""``batchphone status OUT``: where a run stands, read from its journal, live or finished.

Read-only, from any process: the journal is opened for reading (never through a link), its lock
is not taken, and nothing is written or truncated (a torn last line is just not counted). So
support can look at a long run someone else started while it goes on.

A row counts by its last record. Records of a kind this version does not know (a future
``unsettled`` status, call-start records) are skipped or counted under their own status, never
an error: a newer batchphone may be writing the journal.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from batchphone.errors import InputError
from batchphone.files.journal import FORMAT, journal_path, open_nofollow
from batchphone.files.lock import lock_holder, lock_path
from batchphone.models import FINAL_STATUSES, Status

__all__ = ["RunStatus", "count_input", "read_status", "with_eta"]

_FINAL = frozenset(status.value for status in FINAL_STATUSES)
_NOT_ATTEMPTED = Status.NOT_ATTEMPTED.value


@dataclass(frozen=True, slots=True)
class RunStatus:
    """What a journal says about its run, and whether a process holds the run's lock."""

    journal: str
    command: str | None
    input_name: str | None
    input_sha256: str | None
    project_id: str | None
    base_url: str | None
    started_ts: float | None
    #: rows by their last status (``not_attempted`` and unknown statuses too)
    counts: dict[str, int]
    #: rows whose last status is final (a resumed run does not send them again)
    rows_final: int
    calls: int
    last_call_ts: float | None
    locked: bool
    #: ``pid N on HOST`` as the lock's holder wrote it (``None`` when not locked)
    holder: str | None
    #: rows in the input (``None``: the input was not found to count them)
    input_rows: int | None = None
    #: the least time the rows left take at ``rate`` (``None`` without ``input_rows``)
    eta_s: float | None = None
    rate: str | None = None
    #: the journal header's run identity, as written
    identity: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    #: the budget the run was started with (``N/SECONDS``; ``None`` in older journals)
    run_rate: str | None = dataclasses.field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The ``status --json`` document."""
        return {
            "journal": self.journal,
            "command": self.command,
            "input": self.input_name,
            "input_sha256": self.input_sha256,
            "project_id": self.project_id,
            "base_url": self.base_url,
            "started_ts": self.started_ts,
            "counts": dict(sorted(self.counts.items())),
            "rows_final": self.rows_final,
            "input_rows": self.input_rows,
            "calls": self.calls,
            "last_call_ts": self.last_call_ts,
            "locked": self.locked,
            "holder": self.holder,
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
            "rate": self.rate,
        }


def read_status(out: Path) -> RunStatus:
    """The status of the run writing ``out`` (its result file, or the journal itself).

    ``InputError`` when there is no journal or it is not a batchphone journal.
    """
    path = out if out.name.endswith(".journal") else journal_path(out)
    result = out.with_name(out.name[: -len(".journal")]) if path is out else out
    tally = _Tally(path)
    with open(_open_journal(path, result), "rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                break  # being written, or torn by a crash: not a record yet
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a damaged line: the others still tell
            if isinstance(record, dict):
                tally.take(record)
    header = tally.header
    if header is None:
        raise InputError(f"{path}: empty: not a batchphone journal yet", path=str(path))
    identity = header.get("identity") or {}
    counts = Counter(tally.last.values())
    locked, holder = lock_holder(lock_path(result))
    return RunStatus(
        journal=str(path),
        command=identity.get("command"),
        input_name=identity.get("input_name"),
        input_sha256=identity.get("input_sha256"),
        project_id=identity.get("project_id"),
        base_url=identity.get("base_url"),
        started_ts=header.get("created"),
        counts=dict(counts),
        rows_final=sum(n for status, n in counts.items() if status in _FINAL),
        calls=tally.calls,  # every call (reads, retries, 429s too) leaves one call record
        last_call_ts=tally.last_call,
        locked=locked,
        holder=holder,
        identity=dict(identity),
        run_rate=header.get("rate") if isinstance(header.get("rate"), str) else None,
    )


def _open_journal(path: Path, result: Path) -> int:
    """A read-only descriptor of the journal ``path`` (never through a link), or
    ``InputError`` saying why there is none."""
    try:
        return open_nofollow(path, os.O_RDONLY)
    except FileNotFoundError:
        raise InputError(
            f"{path}: no journal: no run has written {result} (validate and dry runs keep "
            "none), or it was moved aside",
            path=str(path),
        ) from None
    except OSError as exc:
        raise InputError(f"cannot read journal {path}: {exc.strerror}", path=str(path)) from None


@dataclass(slots=True)
class _Tally:
    """What a journal's records add up to: its header, each row's last status, the calls."""

    path: Path
    header: dict[str, Any] | None = None
    last: dict[int, str] = dataclasses.field(default_factory=dict)
    calls: int = 0
    last_call: float | None = None

    def take(self, record: dict[str, Any]) -> None:
        """Count one record (the first must be the header: else ``InputError``)."""
        if self.header is None:
            if record.get("format") != FORMAT:
                raise InputError(f"{self.path}: not a batchphone journal", path=str(self.path))
            self.header = record
            return
        call = record.get("call")
        if isinstance(call, int | float) and "row" not in record:
            self.calls += 1
            self.last_call = max(self.last_call or 0.0, float(call))
            return
        row, status = record.get("row"), record.get("status")
        if isinstance(row, int) and isinstance(status, str) and "start" not in record:
            self.last[row] = status
            if record.get("attempts") and isinstance(record.get("ts"), int | float):
                self.last_call = max(self.last_call or 0.0, float(record["ts"]))
        # any other kind (call starts, ...): not ours to count


def count_input(status: RunStatus, candidates: list[Path]) -> int | None:
    """The rows of the run's input: the first candidate whose content is the journal's input
    (same SHA-256: never another file of the same name). ``None`` when none is."""
    from batchphone.errors import BatchphoneError
    from batchphone.files.reader import InputSpec, file_sha256, open_input

    header = status.identity
    for candidate in candidates:
        try:
            if not candidate.is_file() or file_sha256(candidate) != status.input_sha256:
                continue
            if status.command == "undo":
                from batchphone.modes.reverse import open_results

                return open_results(candidate).count_rows()
            spec = InputSpec(
                path=candidate,
                login_id_column=header.get("login_id_column", "loginId"),
                phone_column=header.get("phone_column", "phone"),
                sheet=header.get("sheet"),
            )
            return open_input(spec).count_rows()
        except (BatchphoneError, OSError):
            continue
    return None


def with_eta(
    status: RunStatus, input_rows: int | None, rate_calls: int, rate_period: float
) -> RunStatus:
    """``status`` with the rows of its input and the time the rows left take at the rate.

    The calls a row costs are those the run made so far per final row (reads and batches
    make it far less than one), or one before any row is final: the bar's estimate. A run that
    no process holds journaled only the rows that reached a worker; the others count as
    ``not_attempted``, as its result file lists them (a live run has yet to reach them).
    """
    rate = f"{rate_calls}/{rate_period:g}"
    if input_rows is None:
        return dataclasses.replace(status, rate=rate)
    counts = dict(status.counts)
    unreached = input_rows - sum(counts.values())
    if unreached > 0 and not status.locked:
        counts[_NOT_ATTEMPTED] = counts.get(_NOT_ATTEMPTED, 0) + unreached
    status = dataclasses.replace(status, counts=counts)
    left = max(input_rows - status.rows_final, 0)
    per_row = status.calls / status.rows_final if status.rows_final and status.calls else 1.0
    eta = math.ceil(left * per_row) * rate_period / rate_calls
    return dataclasses.replace(status, input_rows=input_rows, eta_s=eta, rate=rate)
