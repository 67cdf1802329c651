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
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from batchphone.cells import parse_flag
from batchphone.errors import InputError
from batchphone.models import LOOKUP_COLUMNS, Reason, RowResult, Status, UpdateRequest
from batchphone.prepare import EXPLANATIONS, Prepared, now_iso
from batchphone.reader import Table, open_table
from batchphone.writer import RESULT_FORMATS, XLSX_EXACT_TEXT

__all__ = ["UndoSource", "open_results"]

_LOGIN, _PHONE, _STATUS = "loginId", "phone", "status"
_PHONE_BEFORE, _VERIFIED_BEFORE = LOOKUP_COLUMNS
_COLUMNS = (_LOGIN, _PHONE, _STATUS, _PHONE_BEFORE, _VERIFIED_BEFORE)
#: The writer defuses CSV/TSV cells that start like a formula with a leading quote (and XLSX
#: cells too, in results written before ``XLSX_EXACT_TEXT`` marked them).
_DEFUSED_FORMATS = ("csv", "tsv")
_FORMULA_START = r"^[=+\-@\t\r]"
_PHONE_SHAPED = r"^\+?[0-9 ().\-/]+$"
_BATCH_ROWS = 5_000
#: Rows whose call may have changed the user: updated, unsettled (the answer was lost), and
#: failed with a before-image (a canary mismatch, a 200 that showed no change, a refusal).
#: Each is read first; only a user who holds what the run set is restored.
_MAY_HAVE_CHANGED = frozenset({Status.UPDATED.value, Status.UNSETTLED.value, Status.FAILED.value})


def open_results(path: Path) -> UndoSource:
    """Check that ``path`` is a result file with before-images and return it as a source.

    Raises ``InputError`` (one line, exit 2) for anything else.
    """
    if path.suffix.lower() not in RESULT_FORMATS:
        kinds = ", ".join(RESULT_FORMATS)
        raise InputError(f"{path}: not a result file type ({kinds})", path=str(path))
    table = open_table(path, (_LOGIN, _PHONE))  # the reader's checks: readable, UTF-8, a header
    columns = table.columns
    missing = [name for name in (_LOGIN, _PHONE, _STATUS) if name not in columns]
    if missing and "row" in columns:
        raise InputError(
            f"{path}: has no column {missing[0]!r}: a short sheet (--columns, --short-out) "
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
            "the users before updating them (every run records it unless --no-lookup), or the "
            "file is a short sheet (--columns): there is nothing to restore them to",
            path=str(path),
        )
    source = UndoSource(table)
    # a file a spreadsheet re-saved is so from its first rows: refused before any call
    source.check_phones(limit=_BATCH_ROWS)
    return source


def _undefuse(cell: pl.Expr) -> pl.Expr:
    """The inverse of ``writer.defuse``: drop the ``'`` it put before a formula-like value.

    The writer quotes a value when, after its own leading quotes, it starts like a formula and
    is not phone-shaped; so a cell that starts with ``'`` and meets that test had one added.
    """
    text = cell.str.replace(r"^'+", "")
    quoted = (
        cell.str.starts_with("'")
        & text.str.contains(_FORMULA_START)
        & ~text.str.contains(_PHONE_SHAPED)
    )
    return pl.when(quoted).then(cell.str.slice(1)).otherwise(cell)


def _exact_text(path: Path) -> bool:
    """Whether an XLSX result holds its text exactly (no quote before a formula-like value)."""
    try:
        with zipfile.ZipFile(path) as workbook:
            properties = workbook.read("docProps/custom.xml")
    except (KeyError, OSError, zipfile.BadZipFile):
        return False
    return f'name="{XLSX_EXACT_TEXT}"'.encode() in properties


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
        defused = self.format in _DEFUSED_FORMATS or (
            self.format == "xlsx" and not _exact_text(self.path)
        )
        cells = _undefuse if defused else None
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
        return RowResult(
            row=row,
            login_id=login_id,
            phone_input=phone_before,
            phone=None,
            status=status,
            reason=reason,
            error_message=EXPLANATIONS.get(reason),
            finished_at=now_iso(),
            line=line,
        )

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
