"""The page's files in the work folder: uploads, one folder per job, history, downloads.

A job is a folder ``<work>/<id>/`` holding the uploaded input (0600), the plan, result and
undo files that the public API wrote there (each with its journal and lock, as a CLI run has)
and ``job.json``, the page's own notes (file name, chosen columns and options, summaries;
no row's content). Result files are read with the reader the CLI uses (``open_table``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from batchphone.errors import InputError
from batchphone.files.atomic import write_private

if TYPE_CHECKING:
    from batchphone.modes.status import RunStatus

__all__ = [
    "OUTPUTS",
    "UploadTooLarge",
    "find_runs",
    "guess_columns",
    "job_dir",
    "load_job",
    "new_job",
    "read_rows",
    "save_job",
    "sheet_headers",
]

#: The files a job's steps write, by the name the page uses for them.
OUTPUTS = {
    "plan": "plan.xlsx",
    "result": "result.xlsx",
    "undo-check": "undo-check.xlsx",
    "undo": "undo.xlsx",
}
#: Columns of the short sheet to send back, when the result has them (``line``: newer runs).
SHORT_COLUMNS = ("line", "row", "loginId", "phone_input", "phone", "status", "reason")
_ID = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")
_SAFE = re.compile(r"[^A-Za-z0-9._ -]+")
_CHUNK = 1 << 16
_K = TypeVar("_K")
_V = TypeVar("_V")

#: header names (lower case, without spaces, ``_`` and ``-``) that name a column's meaning
_GUESSES = {
    "login_id_column": ("loginid", "login", "email", "emailaddress", "username", "user", "userid"),
    "phone_column": ("phone", "phonenumber", "mobile", "mobilephone", "cell", "tel", "telephone"),
}


class UploadTooLarge(Exception):
    """The upload passed the size limit: nothing of it was kept."""


def job_dir(work: Path, job_id: str) -> Path | None:
    """The folder of job ``job_id`` (``None`` for an id that is not one: never a path)."""
    if not _ID.fullmatch(job_id):
        return None
    path = work / job_id
    return path if (path / "job.json").is_file() else None


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=False, exist_ok=False)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)


async def new_job(work: Path, name: str, chunks: Any, limit: int) -> str:
    """Store an upload (an async iterator of bytes) as a new job; its id.

    Written 0600 as it arrives; past ``limit`` bytes the partial file and the job's folder are
    removed and ``UploadTooLarge`` is raised.
    """
    import anyio

    given = Path(Path(name).name)
    safe = (_SAFE.sub("_", given.stem).strip(" .") or "input") + given.suffix.lower()
    job_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
    folder = work / job_id
    _private_dir(folder)
    target = folder / safe
    size = 0
    try:
        private = 0o600

        def opener(path: str, flags: int) -> int:
            return os.open(path, flags, private)

        async with await anyio.open_file(target, "xb", opener=opener) as file:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise UploadTooLarge
                await file.write(chunk)
        save_job(folder, {"id": job_id, "name": safe, "created": time.time(), "bytes": size})
    except BaseException:
        with contextlib.suppress(OSError):
            target.unlink()
        with contextlib.suppress(OSError):
            (folder / "job.json").unlink()
        with contextlib.suppress(OSError):
            folder.rmdir()
        raise
    return job_id


def load_job(folder: Path) -> dict[str, Any]:
    """The page's notes of a job."""
    record: dict[str, Any] = json.loads((folder / "job.json").read_text(encoding="utf-8"))
    return record


def save_job(folder: Path, record: dict[str, Any]) -> None:
    """Replace the page's notes of a job (atomically, 0600)."""
    write_private(folder / "job.json", json.dumps(record, indent=1).encode())


def sheet_headers(path: Path, sheet: str | None) -> tuple[list[str], str | None, list[str]]:
    """(sheet names, the sheet read, its header) of an input; ``InputError`` as the CLI's."""
    from batchphone.files.reader import open_table

    if path.suffix.lower() != ".xlsx":
        return [], None, list(open_table(path).columns)
    import fastexcel

    try:  # not open_table first: its check of the first sheet would hide the others
        reader = fastexcel.read_excel(path)
    except Exception:
        open_table(path)  # the CLI's one-line error for what is wrong with the file
        raise InputError(f"{path.name}: cannot be read as XLSX", path=str(path)) from None
    sheets = list(reader.sheet_names)
    index = sheets.index(sheet) if sheet in sheets else 0
    frame = reader.load_sheet(index, header_row=None, n_rows=1, dtypes="string").to_polars()
    header = [str(cell) for cell in frame.row(0) if cell is not None] if frame.height else []
    return sheets, sheets[index], header


def guess_columns(header: list[str]) -> dict[str, str | None]:
    """The login id and phone columns a header most likely has (``None``: no guess)."""

    def key(name: str) -> str:
        return re.sub(r"[\s_\-]+", "", name.lower())

    keyed = {key(name): name for name in reversed(header)}
    guessed: dict[str, str | None] = {}
    for setting, names in _GUESSES.items():
        guessed[setting] = next((keyed[n] for n in names if n in keyed), None)
    return guessed


@dataclass(frozen=True, slots=True)
class Rows:
    """A page of a result file's rows, with the statuses it has."""

    columns: list[str]
    rows: list[dict[str, str | None]]
    matching: int


class _ByVersion(Generic[_K, _V]):
    """Values read from files, each kept while its file keeps its size and time; past ``most``
    entries all are forgotten (a few jobs' pages: personal data is not hoarded in memory)."""

    def __init__(self, most: int | None = None) -> None:
        self._most = most
        self._kept: dict[_K, tuple[tuple[int, int], _V]] = {}

    def get(self, key: _K, path: Path, read: Callable[[], _V]) -> _V:
        """The value kept for ``key`` if ``path`` has not changed since, else ``read()``."""
        stat = path.stat()
        version = (stat.st_mtime_ns, stat.st_size)
        cached = self._kept.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        value = read()
        if self._most is not None and len(self._kept) > self._most:
            self._kept.clear()
        self._kept[key] = (version, value)
        return value


_READ: _ByVersion[tuple[Path, str | tuple[str, ...] | None, int], Rows] = _ByVersion(most=64)


def read_rows(path: Path, status: str | tuple[str, ...] | None, most: int) -> Rows:
    """The first ``most`` rows of a result file (of ``status`` only, or of these statuses,
    when given); read once per version of the file, since a page shows them again after each
    step."""
    return _READ.get((path, status, most), path, lambda: _read_rows(path, status, most))


def _read_rows(path: Path, status: str | tuple[str, ...] | None, most: int) -> Rows:
    from batchphone.files.reader import open_table

    table = open_table(path)
    columns = list(table.columns)
    rows: list[dict[str, str | None]] = []
    matching = 0
    wanted = (status,) if isinstance(status, str) else status
    for batch in table.rows(columns, batch_size=5000):
        for values in batch:
            record = dict(zip(columns, values, strict=True))
            if wanted and record.get("status") not in wanted:
                continue
            matching += 1
            if len(rows) < most:
                rows.append(record)
    return Rows(columns, rows, matching)


def converted(path: Path, fmt: str, short: bool) -> bytes:
    """A result file as CSV or XLSX, whole or as the short sheet to send back.

    Every cell stays text but the row numbers (numbers, as in the CLI's XLSX results); in CSV a
    cell a spreadsheet could run as a formula starts with ``'`` (as the CLI's CSV results do).
    """
    from batchphone.files.formats import defuse, holds_exact_text
    from batchphone.files.reader import open_table

    table = open_table(path)
    exact = holds_exact_text(path)
    columns = [c for c in SHORT_COLUMNS if c in table.columns] if short else list(table.columns)
    rows = (row for batch in table.rows(columns, batch_size=5000) for row in batch)
    if fmt == "csv":
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            # an older XLSX result holds its formula-like cells quoted already
            writer.writerow(["" if v is None else _csv_cell(v, exact, defuse) for v in row])
        return buffer.getvalue().encode("utf-8")
    import io

    import xlsxwriter

    data = io.BytesIO()
    workbook = xlsxwriter.Workbook(
        data,
        {
            "in_memory": True,
            "strings_to_numbers": False,
            "strings_to_formulas": False,
            "strings_to_urls": False,
        },
    )
    sheet = workbook.add_worksheet("short" if short else "results")
    bold = workbook.add_format({"bold": True})
    for col, name in enumerate(columns):
        sheet.write_string(0, col, name, bold)
    numbers = {col for col, name in enumerate(columns) if name in _NUMBER_COLUMNS}
    for number, row in enumerate(rows, start=1):
        for col, value in enumerate(row):
            if value is None:
                continue
            if col in numbers and value.isdigit():
                sheet.write_number(number, col, int(value))
            else:
                sheet.write_string(number, col, value)
    sheet.autofilter(0, 0, 0, max(len(columns) - 1, 0))
    sheet.freeze_panes(1, 0)
    workbook.close()
    return data.getvalue()


_NUMBER_COLUMNS = frozenset({"row", "line"})


def _csv_cell(value: str, exact: bool, defuse: Callable[[str], str]) -> str:
    return value if value.startswith("'") and not exact else defuse(value)


def lock_holder(out: Path) -> str | None:
    """``pid N on HOST`` while a live process on this host holds the run's lock, else ``None``.

    Read from the lock file, never by taking the lock (a probe could turn a starting run away).
    """
    import socket

    from batchphone.files.lock import lock_path

    try:
        text = lock_path(out).read_bytes()[1:512].decode("utf-8", "replace").strip()
    except OSError:
        return None
    match = re.fullmatch(r"pid (\d+) on (.+)", text)
    if match is None or match.group(2) != socket.gethostname():
        return None
    pid = int(match.group(1))
    held = _kernel_lock(lock_path(out), pid)
    if held is None:  # no /proc/locks: a live process of that pid stands in
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, another user's
        held = True
    return text if held else None


def _kernel_lock(path: Path, pid: int) -> bool | None:
    """Whether ``pid`` holds a lock on ``path`` as Linux's /proc/locks says (``None``: no such
    file here). The text of a released lock file stays, and its pid may live on."""
    try:
        table = Path("/proc/locks").read_text()
        inode = path.stat().st_ino
    except OSError:
        return None
    for line in table.splitlines():
        fields = line.split()
        if "->" in fields:  # a waiter, not a holder
            continue
        if len(fields) > 5 and fields[4] == str(pid) and fields[5].endswith(f":{inode}"):
            return True
    return False


@dataclass(frozen=True, slots=True)
class FoundRun:
    """A result file in the work folder, with its journal (a run of the page or the CLI's)."""

    out: Path
    job_id: str | None
    counts: dict[str, int]
    holder: str | None
    modified: float
    error: str | None = None
    #: the command that wrote it, as its journal names it (``run``, ``plan``, ``undo``)
    command: str | None = None


def find_runs(work: Path, depth: int = 2) -> list[FoundRun]:
    """Every result file with a journal under ``work`` (newest first), with its counts by status."""
    found: list[FoundRun] = []
    for journal in _journals(work, depth):
        out = journal.with_name(journal.name[: -len(".journal")])
        job_id = out.parent.name if job_dir(work, out.parent.name) is not None else None
        holder = lock_holder(out)
        counts: dict[str, int] = {}
        error = None
        command = None
        try:
            journaled = journal_status(journal)
            command = journaled.command
        except InputError as exc:
            journaled, error = None, exc.message
        if holder is not None or not out.is_file():
            # a run going on (or ended before writing it): the result file is not there yet,
            # or is an earlier run's; its journal has the rows so far
            counts = journaled.counts if journaled is not None else {}
        else:
            try:
                counts, error = status_counts(out), None
            except InputError as exc:
                error = exc.message
        modified = max(p.stat().st_mtime for p in (journal, out) if p.exists())
        found.append(FoundRun(out, job_id, counts, holder, modified, error, command))
    found.sort(key=lambda run: run.modified, reverse=True)
    return found


def _journals(folder: Path, depth: int) -> Iterator[Path]:
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.is_symlink():
            continue
        if entry.is_file() and entry.name.endswith(".journal"):
            yield entry
        elif entry.is_dir() and depth > 1 and not entry.name.startswith("."):
            yield from _journals(entry, depth - 1)


_JOURNALED: _ByVersion[Path, RunStatus] = _ByVersion(most=256)


def journal_status(journal: Path) -> RunStatus:
    """What ``batchphone status`` reads from a run's journal (once per version of it): the
    command that wrote it and its rows by their last status."""
    from batchphone.modes.status import read_status

    return _JOURNALED.get(journal, journal, lambda: read_status(journal))


_COUNTED: _ByVersion[Path, dict[str, int]] = _ByVersion()


def status_counts(out: Path) -> dict[str, int]:
    """Rows of a result file by status, read with the CLI's reader (once per version)."""
    return _COUNTED.get(out, out, lambda: _count_statuses(out))


def _count_statuses(out: Path) -> dict[str, int]:
    from batchphone.files.reader import open_table

    table = open_table(out)
    counts: dict[str, int] = {}
    if "status" not in table.columns:
        return counts
    for batch in table.rows(["status"], batch_size=20000):
        for (status,) in batch:
            key = status or ""
            counts[key] = counts.get(key, 0) + 1
    return counts
