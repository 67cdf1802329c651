"""``validate`` and dry runs: the report written straight from the prepared batches.

These jobs send nothing, so a row's result is known the moment it is judged. They skip what a
run that calls the API needs: no request and result object per row, no journal round trip, no
sort (rows are judged in file order). Each batch becomes rows of result values that stream into
the writer (``write_rows``: same formats, columns and rules as every result file). The result
file is the same as the row-by-row path's, byte for byte but for ``finished_at``.

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
from typing import Any

import anyio
import anyio.from_thread

from batchphone.files.journal import Journal, RunIdentity
from batchphone.files.reader import InputSource
from batchphone.files.writer import ShortSheet, write_rows
from batchphone.models import RESULT_COLUMNS, InputRow, NotValidRow, Reason, RowResult, Status
from batchphone.modes.command import CommandPlan
from batchphone.modes.ending import Tally, log_started
from batchphone.modes.job import BATCH_ROWS
from batchphone.progress import NullProgress, Progress
from batchphone.remote.stop import Stop
from batchphone.rows.prepare import EXPLANATIONS, Outcome, Preparer, now_iso

__all__ = ["report_rows", "write_report"]

#: How many rows that are not valid a summary without a report file lists.
SHOWN_ROWS = 20
Values = tuple[Any, ...]
_STATUS_AT = RESULT_COLUMNS.index("status")
#: (status, reason) -> their texts in the result file: (status, reason, error_message)
_Texts = dict[tuple[Status, Reason | None], tuple[str, str | None, str | None]]


class _Stopped(Exception):
    """Ctrl-C or SIGTERM: stop reading; the result file is not replaced."""


def report_rows(
    source: InputSource,
    preparer: Preparer,
    *,
    limit: int | None = None,
    on_batch: Callable[[list[Values]], None] | None = None,
) -> Iterator[Values]:
    """The result values (``RESULT_COLUMNS`` order) of every input row, ascending.

    ``on_batch`` sees each batch's values before they are yielded (counts, progress, a stop).
    """
    settled = _settle_repeated(source, preparer, limit) if preparer.repeated else {}
    texts: _Texts = {}
    for rows in source.batches(batch_size=BATCH_ROWS, limit=limit):
        outcomes: list[Outcome] = preparer.outcomes(
            [row for row in rows if row.row not in settled] if settled else rows
        )
        values = _batch_values(rows, outcomes, settled, texts)
        if on_batch is not None:
            on_batch(values)
        yield from values


def _settle_repeated(
    source: InputSource, preparer: Preparer, limit: int | None
) -> dict[int, Values]:
    """Rows of repeated login ids: held by the preparer until the input ends, then settled."""
    settled: dict[int, Values] = {}
    for rows in source.batches(batch_size=BATCH_ROWS, limit=limit):
        preparer.prepare([row for row in rows if row.login_id in preparer.repeated])
    for result in preparer.finish():
        assert isinstance(result, RowResult)  # validate and dry runs send nothing
        settled[result.row] = result.values(RESULT_COLUMNS)
    return settled


def _batch_values(
    rows: list[InputRow], outcomes: list[Outcome], settled: dict[int, Values], texts: _Texts
) -> list[Values]:
    """The values of a batch's rows in ``RESULT_COLUMNS`` order (kept inline: a million rows
    go through this loop)."""
    values: list[Values] = []
    judged = iter(outcomes)
    for row in rows:
        if settled and row.row in settled:
            values.append(settled.pop(row.row))
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
        # the columns of RESULT_COLUMNS: no call, no user, no attempt
        values.append(
            (
                row.row,
                row.line,
                row.login_id,
                row.phone_raw,
                phone,
                status_text,
                reason_text,
                None,
                None,
                message,
                0,
                None,
                None,
                None,
                now_iso(),
            )
        )
    return values


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
    """Sees each batch of result values: counts them, keeps the first rows not valid (when
    there is no report file), moves a listener's bar, and ends the reading on a stop."""

    def __init__(self, stop: Stop, progress: Progress, *, keep_not_valid: bool) -> None:
        self.stop = stop
        self.progress = progress
        self.counts: collections.Counter[str] = collections.Counter()
        #: without a report file the summary lists the first rows that are not valid
        self.not_valid: list[NotValidRow] | None = [] if keep_not_valid else None
        # a result per row only for a listener (the CLI's bar, validate's list of bad rows)
        self.listening = not isinstance(progress, NullProgress)

    def __call__(self, values: list[Values]) -> None:
        if self.stop.reason is not None:
            raise _Stopped
        self.counts.update(map(operator.itemgetter(_STATUS_AT), values))
        if self.not_valid is not None and len(self.not_valid) < SHOWN_ROWS:
            _keep_not_valid(values, self.not_valid)
        if self.listening:
            results = [_result(value) for value in values]
            anyio.from_thread.run_sync(_advance, self.progress, results)


def _keep_not_valid(values: list[Values], kept: list[NotValidRow]) -> None:
    """Add the batch's rows that are not valid to ``kept``, up to ``SHOWN_ROWS`` (rows come
    in ascending order: the first ones kept are the first of the file)."""
    status_at, reason_at = RESULT_COLUMNS.index("status"), RESULT_COLUMNS.index("reason")
    line_at = RESULT_COLUMNS.index("line")
    valid = Status.VALID.value
    for value in values:
        if value[status_at] == valid:
            continue
        reason = value[reason_at]
        explanation = (EXPLANATIONS.get(Reason(reason)) if reason else None) or value[status_at]
        line = value[line_at] if isinstance(value[line_at], int) else None
        kept.append(NotValidRow(value[0], value[status_at], reason or "", explanation, line))
        if len(kept) >= SHOWN_ROWS:
            return


def _write_or_count(
    rows: Iterator[Values], out_path: Path | None, short: ShortSheet | None = None
) -> None:
    if out_path is None:
        collections.deque(rows, maxlen=0)  # judged and counted (on_batch), written nowhere
    else:
        write_rows(rows, out_path, columns=RESULT_COLUMNS, short=short)


def _advance(progress: Progress, results: list[RowResult]) -> None:
    for result in results:
        progress.advance(result)


def _result(values: Values) -> RowResult:
    record = dict(zip(RESULT_COLUMNS, values, strict=True))
    return RowResult(
        row=record["row"],
        login_id=record["loginId"],
        phone_input=record["phone_input"],
        phone=record["phone"],
        status=Status(record["status"]),
        reason=Reason(record["reason"]) if record["reason"] else None,
        error_message=record["error_message"],
        finished_at=record["finished_at"],
        line=record["line"],
    )
