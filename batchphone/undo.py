"""``batchphone undo RESULTS``: put back the phones a run changed, from its own result file.

A run that looked users up before updating them (``--skip-unchanged``, an undo) wrote each
user's before-image in ``phone_before`` and ``verified_before``. Undo turns every row that run
``updated`` into an update back to that image, with one condition the screen enforces: the
user's phone must still be the one the run set (else ``skipped``/``CHANGED_SINCE``: someone
changed it since, and their change wins). Everything else about sending (budget, retries,
journal, resume, ``--dry-run``, ``--api batch``) is the ordinary run's: undo is a run whose
rows come from a result file. Its own result file has before-images too, so an undo can be
undone.

Rows are numbered by their position in RESULTS (the run's row numbers when the file is as the
run wrote it; a file filtered down to the rows to undo works as well).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from batchphone.errors import InputError
from batchphone.models import LOOKUP_COLUMNS, Reason, RowResult, Status, UpdateRequest
from batchphone.prepare import EXPLANATIONS, Prepared, now_iso
from batchphone.reader import file_sha256
from batchphone.writer import RESULT_FORMATS

__all__ = ["UndoSource", "open_results"]

_LOGIN, _PHONE, _STATUS = "loginId", "phone", "status"
_PHONE_BEFORE, _VERIFIED_BEFORE = LOOKUP_COLUMNS
_COLUMNS = (_LOGIN, _PHONE, _STATUS, _PHONE_BEFORE, _VERIFIED_BEFORE)
#: The writer defuses CSV/TSV/XLSX cells that start like a formula with a leading quote.
_DEFUSED_FORMATS = ("csv", "tsv", "xlsx")
_FORMULA_START = r"^[=+\-@\t\r]"
_PHONE_SHAPED = r"^\+?[0-9 ().\-/]+$"
_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}
_BATCH_ROWS = 5_000


def open_results(path: Path) -> UndoSource:
    """Check that ``path`` is a result file with before-images and return it as a source.

    Raises ``InputError`` (one line, exit 2) for anything else.
    """
    fmt = RESULT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        kinds = ", ".join(RESULT_FORMATS)
        raise InputError(f"{path}: not a result file type ({kinds})", path=str(path))
    if not path.is_file():
        raise InputError(f"{path}: no such file", path=str(path))
    try:
        columns = _columns(path, fmt)
    except (OSError, ValueError, pl.exceptions.PolarsError) as exc:
        raise InputError(
            f"{path}: cannot be read as {fmt.upper()} ({exc})", path=str(path)
        ) from None
    missing = [name for name in (_LOGIN, _PHONE, _STATUS) if name not in columns]
    if missing and "row" in columns:
        raise InputError(
            f"{path}: has no column {missing[0]!r}: a result file trimmed with --columns "
            f"cannot be undone (undo needs {', '.join(_COLUMNS)})",
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
            "file was trimmed with --columns: there is nothing to restore them to",
            path=str(path),
        )
    return UndoSource(path, fmt)


def _columns(path: Path, fmt: str) -> list[str]:
    if fmt in ("csv", "tsv"):
        separator = "\t" if fmt == "tsv" else ","
        scan = pl.scan_csv(path, separator=separator, infer_schema=False)
        return scan.collect_schema().names()
    if fmt == "parquet":
        return list(pl.read_parquet_schema(path))
    if fmt == "jsonl":
        with path.open("rb") as file:
            first = file.readline()
        return list(json.loads(first)) if first.strip() else []
    return _excel(path).columns


def _excel(path: Path) -> pl.DataFrame:
    import fastexcel

    frame: pl.DataFrame = fastexcel.read_excel(path).load_sheet(0, dtypes="string").to_polars()
    return frame


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


def _bool(text: str | None) -> bool | None:
    value = (text or "").strip().lower()
    return True if value in _TRUE else False if value in _FALSE else None


class UndoSource:
    """A result file read as the rows of an undo run."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path = path
        self.format = fmt
        self._digest: str | None = None

    def content_hash(self) -> str:
        """SHA-256 (hex) of the file's bytes: the undo's journal belongs to this file only."""
        if self._digest is None:
            self._digest = file_sha256(self.path)
        return self._digest

    def count_rows(self, limit: int | None = None) -> int:
        """Rows of the result file (at most ``limit``)."""
        return int(self._frame(limit).select(pl.len()).collect(engine="streaming").item())

    def prepared(self, *, allow_remove: bool, limit: int | None = None) -> Iterator[list[Prepared]]:
        """What undo does with each row, in batches: a request back, or a result at once."""
        done = 0
        try:
            frames = self._frame(limit).collect_batches(chunk_size=_BATCH_ROWS, engine="streaming")
            for frame in frames:
                batch: list[Prepared] = []
                for cells in frame.iter_rows():
                    done += 1
                    batch.append(_undo_row(done, *cells, allow_remove=allow_remove))
                yield batch
        except pl.exceptions.PolarsError as exc:
            message = f"{self.path}: cannot be read after row {done} ({exc})"
            raise InputError(message, path=str(self.path), row=done + 1) from None

    def _frame(self, limit: int | None) -> pl.LazyFrame:
        path, fmt = self.path, self.format
        if fmt in ("csv", "tsv"):
            separator = "\t" if fmt == "tsv" else ","
            frame = pl.scan_csv(path, separator=separator, infer_schema=False)
        elif fmt == "parquet":
            frame = pl.scan_parquet(path)
        elif fmt == "jsonl":
            frame = pl.scan_ndjson(path, schema=dict.fromkeys(_COLUMNS, pl.String))
        else:
            frame = _excel(path).lazy()
        if limit is not None:
            frame = frame.head(limit)
        cells = [pl.col(name).cast(pl.String) for name in _COLUMNS]
        if fmt in _DEFUSED_FORMATS:
            cells = [_undefuse(cell) for cell in cells]
        return frame.select(cells)


def _undo_row(
    row: int,
    login_id: str | None,
    phone: str | None,
    status: str | None,
    phone_before: str | None,
    verified_before: str | None,
    *,
    allow_remove: bool,
) -> Prepared:
    """One row of RESULTS -> the request that restores it, or why nothing is sent."""
    verified = _bool(verified_before)
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
        )

    if status != Status.UPDATED.value or not login_id:
        return local(Status.UNCHANGED, Reason.NOT_UPDATED)
    if verified is None:
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
    )
