"""``batchphone undo RESULTS``: put back the phones a run changed, from its own result file.

A run that looked users up before updating them (every run but ``--no-lookup``, an undo) wrote
each user's before-image in ``phone_before`` and ``verified_before``. Undo turns every row whose
call may have changed its user (``updated``, ``unsettled``: its answer was lost, and ``failed``
with a before-image: a canary mismatch, a 200 that showed no change) into an update back to that
image, with two conditions the screen enforces: a user who already holds the image is left
alone (``unchanged``: the call was not applied), and the user's phone must still be the one the
run set (else ``skipped``/``CHANGED_SINCE``: someone changed it since, and their change wins).
Everything else about sending (budget, retries, journal, resume, ``--dry-run``, ``--api
batch``) is the ordinary run's: undo is a run whose rows come from a result file. Its own
result file has before-images too, so an undo can be undone.

Rows are numbered by their position in RESULTS (the run's row numbers when the file is as the
run wrote it; a file filtered down to the rows to undo works as well); their ``line`` is the one
RESULTS shows for them (the spreadsheet's row, the editor's line).

A run stopped by ``kill -9`` or a crash has written no result file yet (or, when it resumed an
earlier run, left that run's older file), only its journal: undo then reads the journal (``undo
RESULTS`` when RESULTS is missing or older than its journal's records, or ``undo RESULTS.journal``),
whose row records carry the same columns, so a run can be rolled back without first resuming
it (which would send the rows it had not reached). Rows are the journaled ones, in the run's
order; a journal a live run is writing is refused (its rows are not final yet).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from batchphone.cells import parse_flag
from batchphone.errors import InputError
from batchphone.files.formats import FORMATS, file_format, is_defused, undefuse
from batchphone.files.journal import iter_records, journal_path, read_header
from batchphone.files.lock import lock_holder, lock_path
from batchphone.files.reader import Table, file_sha256, open_table
from batchphone.logs import get_logger
from batchphone.models import (
    LOOKUP_COLUMNS,
    InputRow,
    Reason,
    RowResult,
    Status,
    UpdateRequest,
)
from batchphone.rows.prepare import Prepared, local_result

__all__ = ["UndoSource", "open_results"]

log = get_logger()

_LOGIN, _PHONE, _STATUS = "loginId", "phone", "status"
_PHONE_BEFORE, _VERIFIED_BEFORE = LOOKUP_COLUMNS
_COLUMNS = (_LOGIN, _PHONE, _STATUS, _PHONE_BEFORE, _VERIFIED_BEFORE)
_BATCH_ROWS = 5_000
#: Rows whose call may have changed the user: updated, unsettled (the answer was lost), and
#: failed with a before-image (a canary mismatch, a 200 that showed no change, a refusal).
#: Each is read first; only a user who holds what the run set is restored.
_MAY_HAVE_CHANGED = frozenset({Status.UPDATED.value, Status.UNSETTLED.value, Status.FAILED.value})
#: Statuses whose record may lack the before-image an earlier record of the row holds.
_OPEN = frozenset({Status.UNSETTLED.value, Status.FAILED.value, Status.NOT_ATTEMPTED.value})


def open_results(path: Path) -> UndoSource:
    """Check that ``path`` is a result file with before-images and return it as a source.

    Raises ``InputError`` (one line, exit 2) for anything else. A missing result file whose
    journal exists (a run killed before it wrote one), or a journal named itself, is read from
    the journal.
    """
    if path.name.endswith(".journal"):
        return JournalUndoSource(path, path.with_name(path.name[: -len(".journal")]))
    journal = journal_path(path)
    if not path.exists() and not path.is_symlink() and journal.exists():
        source = JournalUndoSource(journal, path)  # first: a live run's journal is refused
        log.warning(
            "undo_from_journal",
            message=f"{path} was never written (the run was killed or crashed): undoing "
            f"from its journal {journal}",
        )
        return source
    if _older_than_journal(path, journal):
        source = JournalUndoSource(journal, path)
        log.warning(
            "undo_from_journal",
            message=f"{path} is older than its journal (a later run on it was killed or "
            f"crashed before writing it): undoing from the journal {journal}",
        )
        return source
    if file_format(path) is None:
        kinds = ", ".join(FORMATS)
        raise InputError(f"{path}: not a result file type ({kinds})", path=str(path))
    table = open_table(path, (_LOGIN, _PHONE))  # the reader's checks: readable, UTF-8, a header
    columns = table.columns
    missing = [name for name in (_LOGIN, _PHONE, _STATUS) if name not in columns]
    if missing and "row" in columns:
        raise InputError(
            f"{path}: has no column {missing[0]!r}: a short sheet (columns=..., short_out=...) "
            f"cannot be undone: undo the result file of that run (undo needs "
            f"{', '.join(_COLUMNS)})",
            path=str(path),
        )
    if missing:
        raise InputError(
            f"{path}: not a batchphone result file (no column {missing[0]!r})", path=str(path)
        )
    if _PHONE_BEFORE not in columns or _VERIFIED_BEFORE not in columns:
        raise InputError(
            f"{path}: has no {_PHONE_BEFORE}/{_VERIFIED_BEFORE} columns: that run did not read "
            "the users before updating them (every run records it unless no_lookup=True), or the "
            "file is a short sheet (columns=...): there is nothing to restore them to",
            path=str(path),
        )
    results = UndoSource(table)
    # a file a spreadsheet re-saved is so from its first rows: refused before any call
    results.check_phones(limit=_BATCH_ROWS)
    return results


def _older_than_journal(path: Path, journal: Path) -> bool:
    """Whether ``journal`` has a row record written after the result file ``path`` was.

    Every run writes its result file from its journal at its end, so a newer record means a
    later run on the same ``--out`` (a resume) died before writing it: the file lacks the rows
    that run changed. A copy, or a file edited since (rows filtered out to undo only some),
    is newer than the records and is read as it is.
    """
    try:
        written = path.stat().st_mtime
        if journal.is_symlink() or journal.stat().st_mtime <= written:
            return False
        return any(float(r.get("ts", 0)) > written for r in iter_records(journal))
    except (OSError, ValueError):
        return False  # no journal, or one we cannot read: the result file is all there is


class UndoSource:
    """A result file read as the rows of an undo run."""

    def __init__(self, table: Table) -> None:
        self.path = table.path
        self.format = table.format
        self._table = table

    def content_hash(self) -> str:
        """SHA-256 (hex) of the file's bytes: the undo's journal belongs to this file only."""
        return self._table.content_hash()

    def count_rows(self, limit: int | None = None) -> int:
        """Rows of the result file (at most ``limit``)."""
        return self._table.count_rows(limit)

    def check_phones(self, limit: int | None = None) -> None:
        """``InputError`` for the first row (of ``limit``) whose phone is not E.164."""
        lines = self._table.lines()
        done = 0
        try:
            columns = (_PHONE, _STATUS)
            for rows in self._table.rows(columns, batch_size=_BATCH_ROWS, limit=limit):
                for phone, status in rows:
                    done += 1
                    line = next(lines, None)
                    _check_phone(self.path, phone, status, line if line is not None else done)
        finally:
            lines.close()

    def prepared(self, *, allow_remove: bool, limit: int | None = None) -> Iterator[list[Prepared]]:
        """What undo does with each row, in batches: a request back, or a result at once."""
        cells = undefuse if is_defused(self.path, self.format) else None
        done = 0
        lines = self._table.lines()
        try:
            batches = self._table.rows(_COLUMNS, batch_size=_BATCH_ROWS, limit=limit, cells=cells)
            for rows in batches:
                batch: list[Prepared] = []
                for row in rows:
                    done += 1
                    line = next(lines, None)
                    _check_phone(self.path, row[1], row[2], line if line is not None else done)
                    batch.append(_undo_row(done, *row, allow_remove=allow_remove, line=line))
                yield batch
        finally:
            lines.close()


def _check_phone(path: Path, phone: str | None, status: str | None, line: int) -> None:
    """Refuse a row whose ``phone`` is not the E.164 a run sends (always ``+`` and digits): a
    spreadsheet that re-saved the file turned it into a number (``14155550000``,
    ``4.41556E+10``), so nothing tells whether the user still holds what the run set."""
    if status in _MAY_HAVE_CHANGED and phone and not phone.startswith("+"):
        raise InputError(
            f"{path}: line {line}: the phone the run set is not in E.164 (no leading +): the "
            "file was re-saved by a spreadsheet, which turns phones into numbers; undo the "
            "result file as batchphone wrote it (or an .xlsx result, whose cells are text)",
            path=str(path),
        )


def _undo_row(
    row: int,
    login_id: str | None,
    phone: str | None,
    status: str | None,
    phone_before: str | None,
    verified_before: str | None,
    *,
    allow_remove: bool,
    line: int | None = None,
) -> Prepared:
    """One row of RESULTS -> the request that restores it, or why nothing is sent."""
    verified = parse_flag(verified_before or "")
    before = phone_before or ""

    def local(status: Status, reason: Reason) -> RowResult:
        # what undo sends a user is the before-image: it is the row's input phone
        return local_result(InputRow(row, login_id, phone_before, line=line), status, reason, None)

    if status not in _MAY_HAVE_CHANGED or not login_id:
        return local(Status.UNCHANGED, Reason.NOT_UPDATED)
    if verified is None:
        if status == Status.FAILED.value:  # a failed read, a refusal: no call changed the user
            return local(Status.UNCHANGED, Reason.NOT_UPDATED)
        return local(Status.SKIPPED, Reason.NO_BEFORE_IMAGE)
    if not before and not allow_remove:
        # the user had no phone: restoring it removes the one the run set
        return local(Status.SKIPPED, Reason.EMPTY_PHONE)
    return UpdateRequest(
        row=row,
        login_id=login_id,
        phone=before,
        verified=verified,
        fail_on_conflict=True,
        phone_input=phone_before,
        expect_phone=phone or "",
        line=line,
    )


class JournalUndoSource(UndoSource):
    """The journal of a run that wrote no result file, read as the rows of an undo run.

    A row is what its last record says; a row still open (``unsettled``, ``failed``) keeps the
    before-image of an earlier record when its last one has none, as a resume would.
    """

    def __init__(self, path: Path, results: Path) -> None:
        self.path = path
        self.format = "jsonl"
        rows: dict[int, dict[str, Any]] = {}
        try:
            header = read_header(path)
        except FileNotFoundError:
            raise InputError(f"{path}: no such file", path=str(path)) from None
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror}", path=str(path)) from None
        if header is None:
            raise InputError(f"{path}: not a batchphone journal", path=str(path))
        locked, holder = lock_holder(lock_path(results))
        if locked:
            raise InputError(
                f"{path}: a run is writing it now ({holder or 'another process'}): stop it "
                "(Ctrl-C) or let it finish, then undo its result file",
                path=str(path),
            )
        for record in iter_records(path):
            row = record.get("row")
            if not isinstance(row, int):
                continue
            known = rows.get(row)
            if (
                known is not None
                and "verified_before" not in record
                and record.get("status") in _OPEN
                and "verified_before" in known
            ):
                record = record | {
                    "phone_before": known.get("phone_before"),
                    "verified_before": known["verified_before"],
                }
            rows[row] = record
        self._rows = [rows[row] for row in sorted(rows)]
        self._digest = file_sha256(path)

    def content_hash(self) -> str:
        """SHA-256 (hex) of the journal as read: an undo's journal belongs to this state of it."""
        return self._digest

    def count_rows(self, limit: int | None = None) -> int:
        """Rows the journal records (at most ``limit``)."""
        return len(self._rows) if limit is None else min(limit, len(self._rows))

    def prepared(self, *, allow_remove: bool, limit: int | None = None) -> Iterator[list[Prepared]]:
        """What undo does with each journaled row, numbered by position as in a result file."""
        rows = self._rows if limit is None else self._rows[:limit]
        batch: list[Prepared] = []
        for number, record in enumerate(rows, start=1):
            verified = record.get("verified_before")
            batch.append(
                _undo_row(
                    number,
                    record.get("loginId"),
                    record.get("phone"),
                    record.get("status"),
                    record.get("phone_before"),
                    None if verified is None else str(bool(verified)).lower(),
                    allow_remove=allow_remove,
                    line=record.get("line"),
                )
            )
            if len(batch) >= _BATCH_ROWS:
                yield batch
                batch = []
        if batch:
            yield batch
