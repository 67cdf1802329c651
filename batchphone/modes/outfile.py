"""The result file of a run that went through the pool: the journal's rows, and the rows it
never reached, written at ``--out`` (or, when that fails after updates were sent, a copy in
the system's temp folder: the rows must be somewhere).
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from batchphone.config import Settings
from batchphone.errors import BatchphoneError, OutputError
from batchphone.files.journal import Journal, iter_records
from batchphone.files.reader import InputSource
from batchphone.files.results import result_rows
from batchphone.files.writer import ShortSheet, write_results
from batchphone.models import Reason, ResultCells, Status
from batchphone.modes.job import BATCH_ROWS
from batchphone.modes.reverse import UndoSource
from batchphone.rows.prepare import EXPLANATIONS, now_iso

__all__ = ["Unreached", "Written", "write_somewhere"]


class Unreached:
    """The rows a run never reached (no journal record): `not_attempted`, from the input.

    A stop does not journal the rows it never got to one by one (300k lines for a 300k-row
    file): the result file lists them all the same, from a second streaming read of the input
    (memory flat), with the login id and phone as read.
    """

    def __init__(
        self,
        source: InputSource | UndoSource,
        settings: Settings,
        journal: Journal,
        total: int,
        reason: Reason | None,
    ) -> None:
        self.source = source
        self.settings = settings
        # 1 byte per row: which rows have a record
        self.codes = bytes(journal.state.statuses[1 : total + 1]).ljust(total, b"\0")
        self.reason = reason or Reason.INTERRUPTED
        self.message = EXPLANATIONS.get(reason or Reason.INTERRUPTED)

    def __iter__(self) -> Iterator[ResultCells]:
        if b"\0" not in self.codes:
            return
        codes, stamp = self.codes, now_iso()
        status, reason = Status.NOT_ATTEMPTED.value, self.reason.value
        try:
            for row, line, login_id, phone_input in self._rows():
                if row <= len(codes) and not codes[row - 1]:
                    yield ResultCells(
                        row=row,
                        line=line,
                        loginId=login_id,
                        phone_input=phone_input,
                        phone=None,
                        status=status,
                        reason=reason,
                        error_message=self.message,
                        attempts=0,
                        finished_at=stamp,
                    )
        except BatchphoneError:
            # the input cannot be read past some row (the error that stopped the run says so):
            # the result lists every row up to there
            return

    def _rows(self) -> Iterator[tuple[int, int | None, str | None, str | None]]:
        limit = self.settings.limit
        if isinstance(self.source, UndoSource):
            prepared = self.source.prepared(allow_remove=self.settings.allow_remove, limit=limit)
            for batch in prepared:
                for item in batch:
                    yield item.row, item.line, item.login_id, item.phone_input
            return
        for rows in self.source.batches(batch_size=BATCH_ROWS, limit=limit):
            for input_row in rows:
                yield input_row.row, input_row.line, input_row.login_id, input_row.phone_raw


@dataclass(frozen=True, slots=True)
class Written:
    """Where the result file was written (``None``: nowhere), and why not at ``--out``."""

    path: Path | None
    error: OutputError | None = None


def write_somewhere(
    out_path: Path,
    journal: Journal,
    total: int,
    unreached: Iterable[ResultCells],
    columns: tuple[str, ...],
    sent: bool,
    short: ShortSheet | None = None,
) -> Written:
    """The result file at ``out_path``; when that fails after updates were sent, a copy in
    the system's temp folder (0600, as every result file): the rows must be somewhere."""
    try:
        _write(out_path, journal, total, unreached, columns, short)
        return Written(out_path)
    except OutputError as exc:
        if not sent:
            return Written(None, exc)
        error = exc
    copy = _copy_path(out_path)
    try:
        _write(copy, journal, total, unreached, columns, None)
    except OutputError:
        return Written(None, error)
    return Written(copy, error)


def _write(
    out_path: Path,
    journal: Journal,
    total: int,
    unreached: Iterable[ResultCells],
    columns: tuple[str, ...],
    short: ShortSheet | None,
) -> int:
    # a journal that failed (a full disk) holds the rest of its records in memory
    journaled = itertools.chain(iter_records(journal.path), journal.unwritten_records())
    rows = (cells for cells in result_rows(journaled) if cells.row <= total)
    written: int = write_results(rows, out_path, columns=columns, in_order=unreached, short=short)
    return written


def _copy_path(out_path: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path(tempfile.gettempdir()) / f"batchphone-{stamp}-{os.getpid()}-{out_path.name}"
