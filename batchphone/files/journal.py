"""The journal: an append-only, crash-safe record of finished rows, and the lock beside it.

``<out>.journal`` is JSON lines: a header naming the run (input hash, target, options that change
what is sent), then one ``RowResult`` record per finished row, with ``ts`` (epoch seconds).
It is the source of truth: the result file is rebuilt from it, and a rerun with the same ``--out``
skips every row it already holds as final. A crash can only tear the last line; opening the
journal cuts it off. Rows whose result came from an API call are written to the OS at once (a
``kill -9`` then loses none of them); rows resolved locally are batched and flushed within 0.5 s.

Write ahead, then act: before a call that may change users leaves the process, each of its rows
gets an ``unsettled``/``IN_FLIGHT`` record holding the user's before-image and the phone the call
sets (``append_intent``, one write per call or patch), and every call's start is recorded
(``{"start": ts, "id": ..., "until": ...}``) before it is sent and its answer after
(``{"call": ts, "id": ...}``). So a ``kill -9`` at any moment leaves, for every user a call may
have changed, what it was before; a resume reads those users back (a row whose user holds what
was sent ends ``updated`` with the journaled before-image), and a restart's limiter counts a call
that never got its answer until ``until`` (its start plus the client's timeout).

A journal that records calls which changed users (a non-dry ``run``/``undo`` with an ``updated``
row or any row that made a call) is the undo data: it is never deleted or overwritten. The same
run resumes it; anything else is refused, and ``--restart`` moves it and its result file aside
(``results.moved-20261203T121500Z.csv`` and its ``.journal``). A journal that changed nothing
(validate, plan, dry run) may be replaced, and so may a run's whose calls reached no server, by
the same command with another base URL (the first one was wrong). The lock, the journal and the
result file are never reached through a symbolic link.
"""

from __future__ import annotations

import errno
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from batchphone.errors import OutputError, ResumeError
from batchphone.logs import get_logger
from batchphone.models import (
    FINAL_STATUSES,
    Command,
    PhoneState,
    Reason,
    RowResult,
    Status,
    UpdateRequest,
)


def _dumps(record: Mapping[str, Any]) -> bytes:
    data: bytes = orjson.dumps(record)
    return data


def _loads(line: bytes) -> Any:
    return orjson.loads(line)


__all__ = [
    "Journal",
    "JournalState",
    "RunIdentity",
    "iter_records",
    "journal_identity",
    "journal_path",
    "read_header",
    "refuse_link",
]

log = get_logger()

FORMAT = "batchphone-journal"
VERSION = 1
_STATUS_CODES = {status: index + 1 for index, status in enumerate(Status)}
_STATUS_BY_CODE = {code: status for status, code in _STATUS_CODES.items()}
_FLUSH_INTERVAL = 0.5
_FLUSH_BYTES = 1 << 16
# O_NOFOLLOW and O_BINARY exist only on some systems: where one is missing its flag is 0 and
# ``refuse_link``'s lstat (POSIX) or text mode never applying (Windows) stands in for it.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_BINARY = getattr(os, "O_BINARY", 0)
_LINK_ERRNOS = {errno.ELOOP, getattr(errno, "EMLINK", errno.ELOOP)}
#: The key of a call-time record: ``{"call": <epoch seconds>, "id": ...}`` (an answer).
CALL_KEY = "call"
#: The key of a call-start record: ``{"start": <epoch seconds>, "id": ..., "until": ...}``.
START_KEY = "start"
_UNSETTLED, _IN_FLIGHT = Status.UNSETTLED.value, Reason.IN_FLIGHT.value
#: Statuses whose record may hold the before-image of a call that changed the user: the image
#: is kept for a resume (``JournalState.befores``) until a later record settles the row.
_OPEN_STATUSES = frozenset({Status.UNSETTLED, Status.FAILED, Status.NOT_ATTEMPTED})
#: Statuses of rows settled without an update call (read, judged locally, or never sent): a
#: record with one of them and no attempts changed nobody. Any other status (``updated``, or a
#: write-ahead intent recorded before its call) counts as a change in ``_scan``.
_NO_CHANGE = frozenset(
    status.value
    for status in (
        Status.WOULD_UPDATE,
        Status.VALID,
        Status.CHANGE,
        Status.UNCHANGED,
        Status.INVALID,
        Status.DUPLICATE,
        Status.NOT_FOUND,
        Status.CONFLICT,
        Status.SKIPPED,
        Status.FAILED,
        Status.NOT_ATTEMPTED,
    )
)
#: Statuses of rows a server's answer settled without an update (a read, a refusal).
_ANSWERED = _NO_CHANGE - {s.value for s in (Status.INVALID, Status.DUPLICATE, Status.NOT_ATTEMPTED)}
#: The reason of a row whose call never left this process (it could not connect).
_NEVER_LEFT = Reason.UNREACHABLE.value


@dataclass(frozen=True, slots=True)
class RunIdentity:
    """What makes a run the same run: its journal resumes only a run with an equal identity.

    The command, the input (name and content), the project, and every option that changes what
    is sent. ``header()`` is what the journal stores and compares: a field added after journals
    were first written (``sheet``, ``emulated``) is left out while unset, so those journals
    still resume.
    """

    command: Command
    input_name: str
    input_sha256: str
    project_id: str | None
    base_url: str | None
    login_id_column: str
    phone_column: str
    default_region: str | None
    verified: bool | None
    allow_merge: bool
    allow_remove: bool
    dry_run: bool
    no_lookup: bool
    api: str
    #: rows per patch call; ``None`` unless ``api`` is ``batch``
    batch_size: int | None
    #: a workbook's sheet (another sheet is another input); ``None``: the first one
    sheet: str | None = None
    #: an emulated project: its state file (resolved path), or ``"memory"`` (``--emulator``);
    #: ``None``: a real project. One rehearsal never resumes another's record, nor a real run's.
    emulated: str | None = None

    def header(self) -> dict[str, Any]:
        """The identity as the journal header holds it (JSON values; ``sheet`` and ``emulated``
        only when set)."""
        header: dict[str, Any] = {
            "command": self.command.value,
            "input_name": self.input_name,
            "input_sha256": self.input_sha256,
            "project_id": self.project_id,
            "base_url": self.base_url,
            "login_id_column": self.login_id_column,
            "phone_column": self.phone_column,
            "default_region": self.default_region,
            "verified": self.verified,
            "allow_merge": self.allow_merge,
            "allow_remove": self.allow_remove,
            "dry_run": self.dry_run,
            "no_lookup": self.no_lookup,
            "api": self.api,
            "batch_size": self.batch_size,
        }
        if self.sheet is not None:
            header["sheet"] = self.sheet
        if self.emulated is not None:
            header["emulated"] = self.emulated
        return header

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> RunIdentity:
        """``header()`` read back: the identity of the run that wrote a journal."""
        return cls(**{**header, "command": Command(header["command"])})


def journal_path(out_path: Path) -> Path:
    """Where the journal of a result file lives."""
    return out_path.with_name(out_path.name + ".journal")


def refuse_link(path: Path) -> None:
    """Raise ``OutputError`` when ``path`` is a symbolic link (followed, it could make us write
    over any file its owner can point it at)."""
    if path.is_symlink():
        raise OutputError(
            f"{path}: is a symbolic link: batchphone never writes its files through a link; "
            "remove the link or choose another out=..."
        )


def open_nofollow(path: Path, flags: int, mode: int = 0o600) -> int:
    """``os.open`` that refuses a symbolic link at ``path`` (``OutputError``)."""
    refuse_link(path)
    try:
        return os.open(path, flags | _NOFOLLOW | _BINARY, mode)
    except OSError as exc:
        if exc.errno in _LINK_ERRNOS or path.is_symlink():  # a link put there since the check
            refuse_link(path)
        raise


@dataclass(slots=True)
class JournalState:
    """What an existing journal says: last status per row, and recent call times."""

    statuses: bytearray = field(default_factory=bytearray)
    call_times: list[float] = field(default_factory=list)
    records: int = 0
    #: the journaled before-image of each row a call may have changed and no record settled
    #: since (unsettled, failed or left unsent after an earlier attempt): a resume's ``prior``
    befores: dict[int, PhoneState] = field(default_factory=dict)

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
    with open(open_nofollow(path, os.O_RDONLY), "rb") as handle:
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


def journal_identity(out_path: Path) -> dict[str, Any]:
    """The run identity in the header of ``out_path``'s journal, as written (``{}`` when there
    is no journal or its first line is not a header). Read-only."""
    try:
        header = read_header(journal_path(out_path))
    except OSError:
        return {}
    return dict(header.get("identity") or {}) if header else {}


def read_header(path: Path) -> dict[str, Any] | None:
    """The header of the journal at ``path``, or ``None`` when its first line is not a whole
    batchphone journal header. ``OSError`` when it cannot be read (never through a link)."""
    for _, line, complete in _read_lines(path):
        try:
            header = _loads(line) if complete else None
        except ValueError:
            return None
        return header if isinstance(header, dict) and header.get("format") == FORMAT else None
    return None


class _AppendOnly:
    """An append-only file of JSON lines, written by one thread.

    Lines are buffered and handed to the OS by ``flush``. The first write or fsync that fails
    (a full disk) stops all writing: what was not written whole stays in memory
    (``unwritten_records``), so a torn line can only be the file's last.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._last_flush = time.monotonic()
        #: the first write or fsync that failed (a full disk): nothing is written after it
        self.failed: OSError | None = None
        #: called (on the appending thread) with that error; unset, the error is raised
        self.on_failure: Callable[[OSError], None] | None = None
        self._unwritten: list[bytes] = []

    def flush(self) -> None:
        """Hand every buffered line to the OS.

        A write that fails (``ENOSPC``) marks the journal ``failed``: the lines not written
        whole stay in memory (``unwritten_records``, for the result file), later lines join
        them, and nothing more is written, so a torn line can only be the file's last.
        """
        if self._buffer:
            data = b"".join(self._buffer)
            self._buffer.clear()
            self._buffered = 0
            if self.failed is not None:
                self._unwritten.append(data)
            else:
                done = 0
                try:
                    while done < len(data):
                        done += os.write(self._fd, data[done:])
                except OSError as exc:
                    # from the start of the line the write broke off in
                    self._unwritten.append(data[data.rfind(b"\n", 0, done) + 1 :])
                    self.fail(exc)
        self._last_flush = time.monotonic()

    def fsync(self) -> None:
        """Ask the OS to put what it holds on disk (blocking: run it in a worker thread).

        It touches only the file descriptor, never the buffer, so it is safe to run while the
        event loop thread goes on appending; ``flush`` must stay on the thread that appends.
        Raises the ``OSError`` of a failed fsync: the appending thread passes it to ``fail``.
        """
        if self._fd >= 0 and self.failed is None:
            os.fsync(self._fd)

    def fail(self, exc: OSError) -> None:
        """Mark the journal failed (nothing more is written) and tell ``on_failure``, once."""
        if self.failed is not None:
            return
        self.failed = exc
        if self.on_failure is None:
            raise exc
        self.on_failure(exc)

    def unwritten_records(self) -> Iterator[dict[str, Any]]:
        """The row records a failed journal could not write, in the order appended."""
        for line in b"".join(self._unwritten).splitlines():
            record = _loads(line)
            if "row" in record:
                yield record

    def close(self) -> None:
        """Flush, fsync and close (a failed journal keeps what it could not write in memory)."""
        if self._fd < 0:
            return
        try:
            self.flush()
            if self.failed is None:
                try:
                    os.fsync(self._fd)
                except OSError as exc:
                    self.fail(exc)
        finally:
            os.close(self._fd)
            self._fd = -1


class Journal(_AppendOnly):
    """An open journal, appended to by the one writer task of a run."""

    def __init__(self, path: Path, header: dict[str, Any], state: JournalState) -> None:
        super().__init__(path)
        self.header = header
        self.state = state
        #: files ``--restart`` moved aside (result file, journal), to report
        self.moved: tuple[Path, ...] = ()
        # call ids: unique across the processes that append to this journal in turn
        self._session = secrets.token_hex(4)
        self._calls = 0

    @classmethod
    def open(
        cls,
        out_path: Path,
        identity: RunIdentity,
        *,
        restart: bool = False,
        replaceable: bool = False,
        resume: bool = True,
        rate: str | None = None,
    ) -> Journal:
        """Open the journal of ``out_path`` for ``identity``, resuming it when it matches.

        A journal that changed users is resumed by the same run (``identity`` equal, ``resume``
        set, no ``restart``); otherwise it is refused (``ResumeError``, naming the command that
        wrote it), or with ``restart`` moved aside with the result file. Any other journal of
        another run is refused unless ``restart`` is set, or ``replaceable`` says it may simply
        be discarded (this command sends nothing), or it came from a dry run, or no server ever
        answered its calls and only the base URL differs (the URL was wrong). ``resume=False``
        (validate: nothing to resume) never resumes. Every check runs before anything is
        written, so a refused journal and its result file stay byte-identical. ``rate``: the
        budget the run starts with (``N/SECONDS``), for ``status``'s ETA; not part of the
        identity (a resumed run may take another).
        """
        path = journal_path(out_path)
        refuse_link(path)
        refuse_link(out_path)
        new = identity.header()
        moved: tuple[Path, ...] | None = ()
        if path.exists():
            moved = _make_way(path, out_path, new, restart, replaceable, resume)
        if moved is None:
            header, state = _load(path)
            journal = cls(path, header, state)
            journal.header["resumed"] = True
            return journal
        header = {"format": FORMAT, "version": VERSION, "identity": new, "created": time.time()}
        if rate is not None:
            header["rate"] = rate
        _create(path, header)
        journal = cls(path, header, JournalState())
        journal.moved = moved
        return journal

    @property
    def resumed(self) -> bool:
        """True when this run continues an earlier one."""
        return bool(self.header.get("resumed"))

    def append(self, result: RowResult, *, ts: float, urgent: bool) -> None:
        """Record ``result``; ``urgent`` (an API call was made) writes it to the OS now.

        This is a plain ``os.write`` of one short line to the page cache: microseconds, cheaper
        than a thread hop, so it runs on the event loop; the slow part (fsync) does not.
        """
        self._line(result, ts)
        if (
            urgent
            or self._buffered >= _FLUSH_BYTES
            or time.monotonic() - self._last_flush >= _FLUSH_INTERVAL
        ):
            self.flush()

    def append_intent(self, requests: Sequence[UpdateRequest], *, ts: float) -> None:
        """Record, before a call that may change users leaves, what each of its rows intends.

        Each row gets an ``unsettled``/``IN_FLIGHT`` record: the phone the call sets and the
        user's before-image, built here with nothing else (it is on the hot path, and the
        answer's record, appended later, has the rest). One write to the OS for the whole call:
        a ``kill -9`` right after it loses none.
        """
        stamp = round(ts, 3)
        for request in requests:
            record: dict[str, Any] = {"row": request.row}
            if request.line is not None:
                record["line"] = request.line
            record |= {
                "loginId": request.login_id,
                "phone_input": request.phone_input,
                "phone": request.phone,
                "status": _UNSETTLED,
                "reason": _IN_FLIGHT,
            }
            if request.before is not None:
                record["phone_before"] = request.before.phone
                record["verified_before"] = request.before.verified
            record["ts"] = stamp
            self._buffer.append(_dumps(record) + b"\n")
            self.state.record(request.row, Status.UNSETTLED)
        self.flush()

    def append_start(self, ts: float, *, until: float) -> str:
        """Record that a call starts at ``ts``; ``until`` is when it holds its budget slot
        until, should its answer never be recorded. Returns the id its answer will name."""
        self._calls += 1
        call_id = f"{self._session}.{self._calls}"
        record = {START_KEY: round(ts, 3), "id": call_id, "until": round(until, 3)}
        self._buffer.append(_dumps(record) + b"\n")
        self.flush()
        return call_id

    def append_call(self, ts: float, call_id: str | None = None) -> None:
        """Record that an API call was answered (or given up) at ``ts`` (epoch seconds).

        Every call (updates, reads, batches, retries, 429s, the license) leaves one such line,
        so a restarted run seeds its limiter with all of them. Written to the OS at once, as
        the row of an API call is. ``call_id`` names the start record it ends.
        """
        record: dict[str, Any] = {CALL_KEY: round(ts, 3)}
        if call_id is not None:
            record["id"] = call_id
        self._buffer.append(_dumps(record) + b"\n")
        self.flush()

    def _line(self, result: RowResult, ts: float) -> None:
        # empty cells are left out: a journal of millions of rows is mostly empty cells
        record = {key: value for key, value in result.to_record().items() if value is not None}
        record["ts"] = round(ts, 3)
        self._buffer.append(_dumps(record) + b"\n")
        self._buffered += len(self._buffer[-1])
        self.state.record(result.row, result.status)


def _make_way(
    path: Path,
    out_path: Path,
    new: Mapping[str, Any],
    restart: bool,
    replaceable: bool,
    resume: bool,
) -> tuple[Path, ...] | None:
    """Decide about the journal already at ``path`` for a run whose identity is ``new``
    (``Journal.open`` says when each happens): ``None`` when that run resumes it; else it is
    moved aside with the result file (the paths moved are returned), deleted (it changed no
    user: ``()``), or refused (``ResumeError``). Nothing is written before the decision."""
    header, changed, answered = _scan(path)
    if header is None and not restart:
        raise ResumeError(
            f"{path} is not a batchphone journal, or is damaged: move it away, "
            "or add restart=True to move it aside"
        )
    old = header.get("identity", {}) if header else {}
    if header and old == new and resume and not restart:
        return None
    if changed and not restart:
        raise ResumeError(_kept(path, old, new))
    if changed:
        return _move_aside(out_path, path)
    if not (restart or replaceable or old.get("dry_run")) and (
        answered or not _retargeted(old, new)
    ):
        raise ResumeError(_mismatch(path, old, new))
    path.unlink()  # it changed no user: nothing is lost
    return ()


def _create(path: Path, header: Mapping[str, Any]) -> None:
    """A new journal holding ``header``, on disk before the first call is sent."""
    fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        os.write(fd, _dumps(header) + b"\n")
        os.fsync(fd)
    except OSError as exc:  # a full disk before the first call: nothing was sent
        path.unlink(missing_ok=True)
        raise OutputError(f"cannot write the journal {path} ({exc.strerror})") from None
    finally:
        os.close(fd)


def _load(path: Path) -> tuple[dict[str, Any], JournalState]:
    state = JournalState()
    header: dict[str, Any] | None = None
    good_end = 0
    cutoff = time.time() - 3600
    calls = _CallTimes(cutoff)
    try:
        for number, (end, line, complete) in enumerate(_read_lines(path), start=1):
            try:
                record = _loads(line) if complete else None
            except ValueError:
                record = None
            if record is None:
                if complete and end != path.stat().st_size:
                    raise ResumeError(
                        f"{path}: line {number} is damaged; run with restart=True to start over"
                    )
                break  # a torn last line: the crash happened while writing it
            good_end = end
            if header is None:
                if record.get("format") != FORMAT:
                    raise ResumeError(f"{path} is not a batchphone journal; move it away")
                header = record
                continue
            if calls.take(record):
                continue
            row, status = int(record["row"]), Status(record["status"])
            state.record(row, status)
            state.records += 1
            _keep_before(state.befores, row, status, record)
            if record.get("attempts") and record.get("ts", 0) >= cutoff:
                state.call_times.append(float(record["ts"]))
    except OSError as exc:
        raise OutputError(f"cannot read journal {path}: {exc.strerror}") from None
    if header is None:
        raise ResumeError(f"{path} is empty or damaged; run with restart=True to start over")
    if calls.seen:  # every call has its record: row times would count the updates twice
        state.call_times = calls.times()
    if good_end < path.stat().st_size:
        fd = open_nofollow(path, os.O_RDWR)
        try:
            os.ftruncate(fd, good_end)
        finally:
            os.close(fd)
    return header, state


def _scan(path: Path) -> tuple[dict[str, Any] | None, bool, bool]:
    """Read-only: the journal's header (``None`` when it is not one), whether it changed users,
    and whether any server answered one of its calls.

    A row changed its user when a record of it says ``updated`` or that calls were made for it
    (``attempts``). A record with a status other than those of rows settled without an update
    (a write-ahead intent, written before its call) counts too, until a later record of the same
    row says that call never left (``not_attempted``/``UNREACHABLE``, no attempts): a journal
    whose calls never reached a server is no record of changes. A journal that cannot be read as
    ours counts as having changed users: only a journal known to hold nothing but local results
    or dry-run rows may be thrown away.
    """
    header: dict[str, Any] | None = None
    pending: set[Any] = set()  # rows whose last record is an intent
    answered = False
    try:
        for _, line, complete in _read_lines(path):
            try:
                record = _loads(line) if complete else None
            except ValueError:
                record = None
            if not isinstance(record, dict):
                if header is None:
                    return None, True, True
                continue  # a damaged line: the others still tell
            if header is None:
                if record.get("format") != FORMAT:
                    return None, True, True
                header = record
                identity = header.get("identity") or {}
                if identity.get("dry_run", True):
                    return header, False, True  # a dry run, validate or plan calls no update
                continue
            if "row" not in record:
                continue  # a call-time record
            status = record.get("status")
            if status == Status.UPDATED.value or record.get("attempts"):
                return header, True, True
            if record.get("http_status") or status in _ANSWERED:
                answered = True  # a read, or an answer that changed nothing (401, 409 ...)
            if status == Status.NOT_ATTEMPTED.value and record.get("reason") == _NEVER_LEFT:
                pending.discard(record["row"])
            elif status not in _NO_CHANGE:
                pending.add(record["row"])
    except OSError as exc:
        raise OutputError(f"cannot read journal {path}: {exc.strerror}") from None
    return header, bool(pending) or header is None, answered or header is None


def _retargeted(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """True when two run identities differ in the API base URL and in nothing else."""
    keys = set(old) | set(new)
    return old.get("base_url") != new.get("base_url") and all(
        old.get(key) == new.get(key) for key in keys - {"base_url"}
    )


def _aside(path: Path, stamp: str, number: int) -> Path:
    tag = f".moved-{stamp}" + (f"-{number}" if number else "")
    return path.with_name(path.stem + tag + path.suffix)


def _move_aside(out_path: Path, path: Path) -> tuple[Path, ...]:
    """Rename the result file and its journal to a free ``<stem>.moved-<UTC>.<ext>`` pair.

    The journal keeps its usual name beside the moved result file, so the pair still reads
    as a result file and its journal (``undo`` takes the moved file as it is).
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    number = 0
    while True:
        target = _aside(out_path, stamp, number)
        if not (os.path.lexists(target) or os.path.lexists(journal_path(target))):
            break
        number += 1
    moved: list[Path] = []
    try:
        if os.path.lexists(out_path):
            os.rename(out_path, target)
            moved.append(target)
        os.rename(path, journal_path(target))
        moved.append(journal_path(target))
    except OSError as exc:
        raise OutputError(f"cannot move {path} aside: {exc.strerror}") from None
    log.warning("moved_aside", reason="restart", files=[str(p) for p in moved])
    return tuple(moved)


class _CallTimes:
    """The call records of a journal read back: when each recent call frees its slot.

    An answered call holds its slot one window past its answer (``{"call": ts}``); a started
    call whose answer was never recorded (a ``kill -9`` with it in flight) holds it one window
    past its ``until``, the latest its answer could have come.
    """

    def __init__(self, cutoff: float) -> None:
        self.cutoff = cutoff
        self.seen = False
        self._answered: list[float] = []
        self._open: dict[str, float] = {}

    def take(self, record: dict[str, Any]) -> bool:
        """True when ``record`` is a call record (and it was taken in)."""
        start = record.get(START_KEY)
        if start is not None:
            self.seen = True
            self._open[str(record.get("id"))] = float(record.get("until", start))
            return True
        ts = record.get(CALL_KEY)
        if ts is None:
            return False
        self.seen = True
        self._open.pop(str(record.get("id")), None)
        if ts >= self.cutoff:
            self._answered.append(float(ts))
        return True

    def times(self) -> list[float]:
        """The limiter's seed: answers, and the ``until`` of calls never answered."""
        unanswered = [until for until in self._open.values() if until >= self.cutoff]
        return sorted(self._answered + unanswered)


def _keep_before(
    befores: dict[int, PhoneState], row: int, status: Status, record: dict[str, Any]
) -> None:
    """Keep the before-image of a row a call may have changed until a record settles it.

    Each image was read just before the call that journaled it, so the last one is the true
    image of the last call; a later record without one (a read that failed) keeps the one
    known. Any final status but ``failed`` settles the row (its record has what undo needs).
    """
    if status not in _OPEN_STATUSES:
        befores.pop(row, None)
        return
    if "verified_before" not in record:
        return
    befores[row] = PhoneState(
        phone=record.get("phone_before") or "", verified=bool(record["verified_before"])
    )


_IDENTITY_WORDS = {
    "input_sha256": "the input file's content changed",
    "input_name": "the input file is another one",
    "project_id": "the target project is another one",
    "base_url": "the API base URL is another one",
    "command": "it was written by another command",
}


def _why(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    changed = [key for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    if "command" in changed:
        return _IDENTITY_WORDS["command"]
    if "emulated" in changed:
        return f"the target is {_target(new, old)}, not {_target(old, new)}"
    first = changed[0] if changed else "identity"
    return _IDENTITY_WORDS.get(first, f"option {first} changed")


def _target(identity: Mapping[str, Any], other: Mapping[str, Any]) -> str:
    """The target of ``identity`` in words (the state file's full path when the name of
    ``other``'s is the same)."""
    emulated = identity.get("emulated")
    if emulated == "memory":
        return "the in-memory emulator (emulator=True)"
    if emulated:
        shown = Path(emulated).name
        theirs = other.get("emulated")
        if theirs not in (None, "memory") and Path(theirs).name == shown:
            shown = emulated  # two state files of one name: their folders tell them apart
        return f"an emulated project ({shown})"
    project = identity.get("project_id")
    return f"project {project}" if project else "no project"


def _kept(path: Path, old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    command = old.get("command") or "an unknown command"
    article = "an" if command[:1] in "aeiou" else "a"
    what = f"{article} '{command}'" if old.get("command") else command
    if old.get("input_name"):
        what += f" of {old['input_name']}"
    why = "" if old == new else f" ({_why(old, new)})"
    return (
        f"{path} is the record of {what} that changed users{why}: it is kept as it is; "
        f"rerun that {old.get('command') or 'command'} to resume it, add restart=True to move "
        "it and its result file aside, or choose another out=..."
    )


def _mismatch(path: Path, old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    why = _why(old, new)
    return (
        f"{path} belongs to another run ({why}); "
        "rerun with restart=True to start over, or choose another out=..."
    )
