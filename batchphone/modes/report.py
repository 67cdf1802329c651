"""``validate`` and dry runs: the report written straight from the prepared batches.

These jobs send nothing, so a row's result is known the moment it is judged. They skip what a
run that calls the API needs: no request and result object per row, no journal round trip, no
sort (rows are judged in file order). Each batch becomes result rows (``ResultCells``) that
stream into the writer (``write_rows``: same formats, columns and rules as every result file).
The result file is the same as the row-by-row path's, byte for byte but for ``finished_at``.

A dry run is not resumable: it changed nothing, so running it again is the way to redo it.
The journal beside the result file is opened as for any run (an old one is refused or replaced
by the same rules) and removed at once: these jobs leave no journal behind.

Rows of repeated login ids depend on later rows: when the input has any, a first pass settles
them (``Preparer.prepare`` / ``finish``, memory in proportion to those rows only) and the
second pass writes them in their place.
"""

from __future__ import annotations

import collections
import contextlib
import operator
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import anyio.from_thread

from batchphone.files.journal import Journal, RunIdentity
from batchphone.files.reader import InputSource
from batchphone.files.writer import ShortSheet, write_rows
from batchphone.models import (
    RESULT_COLUMNS,
    InputRow,
    NotValidRow,
    Reason,
    ResultCells,
    RowResult,
    Status,
)
from batchphone.modes.command import CommandPlan
from batchphone.modes.ending import Tally, log_started
from batchphone.modes.job import BATCH_ROWS
from batchphone.progress import NullProgress, Progress
from batchphone.remote.stop import Stop
from batchphone.rows.prepare import EXPLANATIONS, Outcome, Preparer, now_iso

__all__ = ["report_rows", "write_report"]

#: How many rows that are not valid a summary without a report file lists.
SHOWN_ROWS = 20
#: (status, reason) -> their texts in the result file: (status, reason, error_message)
_Texts = dict[tuple[Status, Reason | None], tuple[str, str | None, str | None]]


class _Stopped(Exception):
    """Ctrl-C or SIGTERM: stop reading; the result file is not replaced."""


def report_rows(
    source: InputSource,
    preparer: Preparer,
    *,
    limit: int | None = None,
    on_batch: Callable[[list[ResultCells]], None] | None = None,
) -> Iterator[ResultCells]:
    """The result row of every input row, ascending.

    ``on_batch`` sees each batch's rows before they are yielded (counts, progress, a stop).
    """
    settled = _settle_repeated(source, preparer, limit) if preparer.repeated else {}
    texts: _Texts = {}
    for rows in source.batches(batch_size=BATCH_ROWS, limit=limit):
        outcomes: list[Outcome] = preparer.outcomes(
            [row for row in rows if row.row not in settled] if settled else rows
        )
        cells = _batch_cells(rows, outcomes, settled, texts)
        if on_batch is not None:
            on_batch(cells)
        yield from cells


def _settle_repeated(
    source: InputSource, preparer: Preparer, limit: int | None
) -> dict[int, ResultCells]:
    """Rows of repeated login ids: held by the preparer until the input ends, then settled."""
    settled: dict[int, ResultCells] = {}
    for rows in source.batches(batch_size=BATCH_ROWS, limit=limit):
        preparer.prepare([row for row in rows if row.login_id in preparer.repeated])
    for result in preparer.finish():
        assert isinstance(result, RowResult)  # validate and dry runs send nothing
        settled[result.row] = result.cells()
    return settled


def _batch_cells(
    rows: list[InputRow], outcomes: list[Outcome], settled: dict[int, ResultCells], texts: _Texts
) -> list[ResultCells]:
    """The result rows of a batch (kept inline: a million rows go through this loop)."""
    cells: list[ResultCells] = []
    judged = iter(outcomes)
    for row in rows:
        if settled and row.row in settled:
            cells.append(settled.pop(row.row))
            continue
        status, reason, phone = next(judged)
        text = texts.get((status, reason))
        if text is None:
            message = EXPLANATIONS.get(reason) if reason else None
            text = texts[status, reason] = (
                status.value,
                reason.value if reason else None,
                message,
            )
        status_text, reason_text, message = text
        # by position (mypy checks each cell's type): no call, no user, no attempt, no
        # before-image
        cells.append(
            ResultCells(
                row.row,  # row
                row.line,  # line
                row.login_id,  # loginId
                row.phone_raw,  # phone_input
                phone,  # phone
                status_text,  # status
                reason_text,  # reason
                None,  # http_status
                None,  # error_code
                message,  # error_message
                0,  # attempts
                None,  # user_id
                None,  # verified_phone
                None,  # user
                now_iso(),  # finished_at
                None,  # phone_before
                None,  # verified_before
                None,  # verified
            )
        )
    return cells


async def write_report(
    plan: CommandPlan,
    source: InputSource,
    identity: RunIdentity,
    progress: Progress,
    stop: Stop,
) -> Tally:
    """Judge every row of ``source`` and write the result file; return what was counted.

    Without an ``out_path`` (``validate`` without ``--out``) the rows are judged and counted,
    and nothing is written anywhere. A stop (``stop``: Ctrl-C, SIGTERM) ends the reading at
    the next batch, and the result file is not replaced.
    """
    out_path = plan.job.out_path
    moved = await anyio.to_thread.run_sync(_no_journal, plan, identity)
    limit = plan.settings.limit
    repeated = await anyio.to_thread.run_sync(source.repeated_login_ids, limit)
    total = await anyio.to_thread.run_sync(source.count_rows, limit)
    log_started(plan, rows=total)
    progress.start(total, done=0, calls_per_second=None)
    counter = _Counter(stop, progress, keep_not_valid=out_path is None)
    rows = report_rows(source, Preparer(plan.rows, repeated), limit=limit, on_batch=counter)
    written = False
    try:
        with contextlib.suppress(_Stopped):
            await anyio.to_thread.run_sync(_write_or_count, rows, out_path, plan.short)
            written = True
    finally:
        progress.close()
    counts = {Status(status): n for status, n in counter.counts.items()}
    if not written:  # the rows not reached, as a stopped run counts them
        unreached = total - sum(counts.values())
        counts[Status.NOT_ATTEMPTED] = counts.get(Status.NOT_ATTEMPTED, 0) + unreached
    short = plan.short
    return Tally(
        total=total,
        counts=counts,
        result_path=str(out_path) if written and out_path is not None else None,
        moved_aside=tuple(str(path) for path in moved),
        short_path=str(short.path) if written and short is not None else None,
        not_valid=tuple(counter.not_valid) if counter.not_valid is not None else None,
    )


def _no_journal(plan: CommandPlan, identity: RunIdentity) -> tuple[Path, ...]:
    """The journal beside the result file, opened as for any run (an old one is refused or
    replaced by the same rules) and removed at once; the files it moved aside."""
    out_path = plan.job.out_path
    if out_path is None:
        return ()
    journal = Journal.open(
        out_path,
        identity,
        restart=plan.settings.restart,
        replaceable=True,
        resume=False,  # nothing to resume; a record of changes is refused, never replaced
    )
    journal.close()
    journal.path.unlink(missing_ok=True)
    return tuple(journal.moved)


class _Counter:
    """Sees each batch of result rows: counts them, keeps the first rows not valid (when
    there is no report file), moves a listener's bar, and ends the reading on a stop."""

    def __init__(self, stop: Stop, progress: Progress, *, keep_not_valid: bool) -> None:
        self.stop = stop
        self.progress = progress
        #: rows by their status's text (a ``Status`` once counted: ``write_report``)
        self.counts: collections.Counter[str] = collections.Counter()
        #: without a report file the summary lists the first rows that are not valid
        self.not_valid: list[NotValidRow] | None = [] if keep_not_valid else None
        # a result per row only for a listener (the CLI's bar, validate's list of bad rows)
        self.listening = not isinstance(progress, NullProgress)

    def __call__(self, rows: list[ResultCells]) -> None:
        if self.stop.reason is not None:
            raise _Stopped
        self.counts.update(map(_status, rows))
        if self.not_valid is not None and len(self.not_valid) < SHOWN_ROWS:
            _keep_not_valid(rows, self.not_valid)
        if self.listening:
            results = [_result(cells) for cells in rows]
            anyio.from_thread.run_sync(_advance, self.progress, results)


_status = operator.attrgetter("status")


def _keep_not_valid(rows: list[ResultCells], kept: list[NotValidRow]) -> None:
    """Add the batch's rows that are not valid to ``kept``, up to ``SHOWN_ROWS`` (rows come
    in ascending order: the first ones kept are the first of the file)."""
    valid = Status.VALID.value
    for cells in rows:
        if cells.status == valid:
            continue
        reason = cells.reason
        explanation = (EXPLANATIONS.get(Reason(reason)) if reason else None) or cells.status
        line = cells.line if isinstance(cells.line, int) else None
        kept.append(NotValidRow(cells.row, cells.status, reason or "", explanation, line))
        if len(kept) >= SHOWN_ROWS:
            return


def _write_or_count(
    rows: Iterator[ResultCells], out_path: Path | None, short: ShortSheet | None = None
) -> None:
    if out_path is None:
        collections.deque(rows, maxlen=0)  # judged and counted (on_batch), written nowhere
    else:
        write_rows(rows, out_path, columns=RESULT_COLUMNS, short=short)


def _advance(progress: Progress, results: list[RowResult]) -> None:
    for result in results:
        progress.advance(result)


def _result(cells: ResultCells) -> RowResult:
    return RowResult(
        row=cells.row,
        login_id=cells.loginId,
        phone_input=cells.phone_input,
        phone=cells.phone,
        status=Status(cells.status),
        reason=Reason(cells.reason) if cells.reason else None,
        error_message=cells.error_message,
        finished_at=cells.finished_at or "",
        line=cells.line,
    )
