"""The journal: an append-only, crash-safe record of finished rows, and the lock beside it.

``<out>.journal`` is JSON lines: a header naming the run (input hash, target, options that change
what is sent), then one ``RowResult`` record per finished row, with ``ts`` (epoch seconds).
It is the source of truth: the result file is rebuilt from it, and a rerun with the same ``--out``
skips every row it already holds as final. A crash can only tear the last line; opening the
journal cuts it off. Rows whose result came from an API call are written to the OS at once (a
``kill -9`` then loses none of them); rows resolved locally are batched and flushed within 0.5 s.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from batchphone.errors import OutputError, ResumeError
from batchphone.models import FINAL_STATUSES, RowResult, Status


def _dumps(record: Mapping[str, Any]) -> bytes:
    data: bytes = orjson.dumps(record)
    return data


def _loads(line: bytes) -> Any:
    return orjson.loads(line)


__all__ = ["Journal", "JournalState", "RunLock", "iter_records", "journal_path", "lock_path"]

FORMAT = "batchphone-journal"
VERSION = 1
_STATUS_CODES = {status: index + 1 for index, status in enumerate(Status)}
_STATUS_BY_CODE = {code: status for status, code in _STATUS_CODES.items()}
_FLUSH_INTERVAL = 0.5
_FLUSH_BYTES = 1 << 16
#: The key of a call-time record: ``{"call": <epoch seconds>}``.
CALL_KEY = "call"


def journal_path(out_path: Path) -> Path:
    """Where the journal of a result file lives."""
    return out_path.with_name(out_path.name + ".journal")


def lock_path(out_path: Path) -> Path:
    """Where the lock of a result file lives."""
    return out_path.with_name(out_path.name + ".lock")


@dataclass(slots=True)
class JournalState:
    """What an existing journal says: last status per row, and recent call times."""

    statuses: bytearray = field(default_factory=bytearray)
    call_times: list[float] = field(default_factory=list)
    records: int = 0

    def record(self, row: int, status: Status) -> None:
        """Remember ``status`` as the last one of ``row``."""
        if row >= len(self.statuses):
            self.statuses.extend(bytes(row + 1 - len(self.statuses) + 1024))
        self.statuses[row] = _STATUS_CODES[status]

    @staticmethod
    def code(status: Status) -> int:
        """The byte that stands for ``status`` in ``statuses``."""
        return _STATUS_CODES[status]

    def status(self, row: int) -> Status | None:
        """The last journaled status of ``row``, or ``None``."""
        if row < len(self.statuses) and self.statuses[row]:
            return _STATUS_BY_CODE[self.statuses[row]]
        return None

    def is_final(self, row: int, *, retry_failed: bool = False) -> bool:
        """True when a resumed run must not send ``row`` again."""
        status = self.status(row)
        if status is None or status not in FINAL_STATUSES:
            return False
        return not (retry_failed and status is Status.FAILED)


def _read_lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """(offset of the line's end, line, complete) for each line of the file."""
    offset = 0
    with path.open("rb") as handle:
        for line in handle:
            offset += len(line)
            yield offset, line, line.endswith(b"\n")


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """Every row record of a journal, in the order written (a torn last line is skipped)."""
    for _, line, complete in _read_lines(path):
        if not complete:
            return
        record = _loads(line)
        if "row" in record:
            yield record


class Journal:
    """An open journal, appended to by the one writer task of a run."""

    def __init__(self, path: Path, header: dict[str, Any], state: JournalState) -> None:
        self.path = path
        self.header = header
        self.state = state
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._last_flush = time.monotonic()

    @classmethod
    def open(
        cls,
        out_path: Path,
        identity: dict[str, Any],
        *,
        restart: bool = False,
        replaceable: bool = False,
    ) -> Journal:
        """Open the journal of ``out_path`` for ``identity``, resuming it when it matches.

        A journal of another run is refused (``ResumeError``) unless ``restart`` is set, or
        ``replaceable`` says the old one may simply be discarded (it came from a dry run, which
        sent nothing, or from ``validate``).
        """
        path = journal_path(out_path)
        if path.exists() and not restart:
            header, state = _load(path)
            if header.get("identity") == identity:
                journal = cls(path, header, state)
                journal.header["resumed"] = True
                return journal
            if not (replaceable or header.get("identity", {}).get("dry_run")):
                raise ResumeError(_mismatch(path, header.get("identity", {}), identity))
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        header = {
            "format": FORMAT,
            "version": VERSION,
            "identity": identity,
            "created": time.time(),
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, _dumps(header) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        return cls(path, header, JournalState())

    @property
    def resumed(self) -> bool:
        """True when this run continues an earlier one."""
        return bool(self.header.get("resumed"))

    def append(self, result: RowResult, *, ts: float, urgent: bool) -> None:
        """Record ``result``; ``urgent`` (an API call was made) writes it to the OS now.

        This is a plain ``os.write`` of one short line to the page cache: microseconds, cheaper
        than a thread hop, so it runs on the event loop; the slow part (fsync) does not.
        """
        # empty cells are left out: a journal of millions of rows is mostly empty cells
        record = {key: value for key, value in result.to_record().items() if value is not None}
        record["ts"] = round(ts, 3)
        self._buffer.append(_dumps(record) + b"\n")
        self._buffered += len(self._buffer[-1])
        self.state.record(result.row, result.status)
        if (
            urgent
            or self._buffered >= _FLUSH_BYTES
            or time.monotonic() - self._last_flush >= _FLUSH_INTERVAL
        ):
            self.flush()

    def append_call(self, ts: float) -> None:
        """Record that an API call was answered (or given up) at ``ts`` (epoch seconds).

        Every call (updates, reads, batches, retries, 429s, the license) leaves one such line,
        so a restarted run seeds its limiter with all of them. Written to the OS at once, as
        the row of an API call is.
        """
        self._buffer.append(_dumps({CALL_KEY: round(ts, 3)}) + b"\n")
        self.flush()

    def flush(self) -> None:
        """Hand every buffered line to the OS."""
        if self._buffer:
            data = b"".join(self._buffer)
            self._buffer.clear()
            self._buffered = 0
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
        self._last_flush = time.monotonic()

    def fsync(self) -> None:
        """Ask the OS to put what it holds on disk (blocking: run it in a worker thread).

        It touches only the file descriptor, never the buffer, so it is safe to run while the
        event loop thread goes on appending; ``flush`` must stay on the thread that appends.
        """
        if self._fd >= 0:
            os.fsync(self._fd)

    def close(self) -> None:
        """Flush, fsync and close."""
        if self._fd >= 0:
            self.flush()
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1


def _load(path: Path) -> tuple[dict[str, Any], JournalState]:
    state = JournalState()
    header: dict[str, Any] | None = None
    good_end = 0
    cutoff = time.time() - 3600
    calls: list[float] = []
    try:
        for number, (end, line, complete) in enumerate(_read_lines(path), start=1):
            try:
                record = _loads(line) if complete else None
            except ValueError:
                record = None
            if record is None:
                if complete and end != path.stat().st_size:
                    raise ResumeError(
                        f"{path}: line {number} is damaged; run with --restart to start over"
                    )
                break  # a torn last line: the crash happened while writing it
            good_end = end
            if header is None:
                if record.get("format") != FORMAT:
                    raise ResumeError(f"{path} is not a batchphone journal; move it away")
                header = record
                continue
            if _call_time(record, calls, cutoff):
                continue
            state.record(int(record["row"]), Status(record["status"]))
            state.records += 1
            if record.get("attempts") and record.get("ts", 0) >= cutoff:
                state.call_times.append(float(record["ts"]))
    except OSError as exc:
        raise OutputError(f"cannot read journal {path}: {exc.strerror}") from None
    if header is None:
        raise ResumeError(f"{path} is empty or damaged; run with --restart to start over")
    if calls:  # every call has its record: row times would count the updates twice
        state.call_times = calls
    if good_end < path.stat().st_size:
        with path.open("r+b") as handle:
            handle.truncate(good_end)
    return header, state


def _call_time(record: dict[str, Any], calls: list[float], cutoff: float) -> bool:
    """True when ``record`` is a call-time record; its time joins ``calls`` if recent."""
    ts = record.get(CALL_KEY)
    if ts is None:
        return False
    if ts >= cutoff:
        calls.append(float(ts))
    return True


_IDENTITY_WORDS = {
    "input_sha256": "the input file's content changed",
    "input_name": "the input file is another one",
    "project_id": "the target project is another one",
    "base_url": "the API base URL is another one",
    "command": "it was written by another command",
}


def _mismatch(path: Path, old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    changed = [key for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    first = changed[0] if changed else "identity"
    why = _IDENTITY_WORDS.get(first, f"option {first} changed")
    return (
        f"{path} belongs to another run ({why}); "
        "rerun with --restart to start over, or choose another --out"
    )


class RunLock:
    """An exclusive lock on a result file, so two runs never write the same journal.

    ``fcntl.flock`` is released by the kernel when its process dies, so a lock left by a
    ``kill -9`` is stale by construction and is simply taken over.
    """

    def __init__(self, out_path: Path) -> None:
        self.path = lock_path(out_path)
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock or raise ``OutputError`` naming the process holding it."""
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        handle = os.fdopen(fd, "r+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = handle.read().strip() or "another process"
            handle.close()
            raise OutputError(
                f"{self.path.name[: -len('.lock')]} is being written by another batchphone run "
                f"({holder}); wait for it or stop it first"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        """Release the lock and remove its file."""
        if self._handle is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self._handle.close()
            self._handle = None
