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
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread

from batchphone.config import Settings
from batchphone.files.journal import Journal, RunIdentity
from batchphone.files.reader import InputSource
from batchphone.files.writer import ShortSheet, short_sheet, write_rows
from batchphone.logs import get_logger
from batchphone.models import (
    RESULT_COLUMNS,
    SUCCESS_STATUSES,
    NotValidRow,
    Reason,
    RowResult,
    Status,
    Summary,
    next_step,
)
from batchphone.modes.job import BATCH_ROWS, Job
from batchphone.modes.reverse import UndoSource
from batchphone.progress import NullProgress, Progress
from batchphone.remote.stop import STOP_SIGNALS
from batchphone.rows.prepare import EXPLANATIONS, Mode, Outcome, Preparer, RowRules, now_iso

__all__ = ["local_report", "report_rows", "write_report"]

log = get_logger()

_EXIT_INTERRUPTED = 130  # as runner.EXIT_INTERRUPTED
#: How many rows that are not valid a summary without a report file lists.
SHOWN_ROWS = 20
Values = tuple[Any, ...]


class _Stopped(Exception):
    """Ctrl-C or SIGTERM: stop reading; the result file is not replaced."""


def local_report(mode: Mode, source: InputSource | UndoSource) -> bool:
    """True when the job's report comes from this module: ``validate`` or a plain dry run."""
    return mode in (Mode.VALIDATE, Mode.DRY_RUN) and isinstance(source, InputSource)


def _rules(settings: Settings, mode: Mode) -> RowRules:
    return RowRules(
        mode=mode,
        default_region=settings.default_region,
        verified=settings.verified,
        allow_merge=settings.allow_merge,
        allow_remove=settings.allow_remove,
    )


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
    settled: dict[int, Values] = {}
    if preparer.repeated:
        # rows of repeated login ids: held by the preparer until the input ends, then settled
        for rows in source.batches(batch_size=BATCH_ROWS, limit=limit):
            preparer.prepare([row for row in rows if row.login_id in preparer.repeated])
        for result in preparer.finish():
            assert isinstance(result, RowResult)  # validate and dry runs send nothing
            record = result.to_record()
            settled[result.row] = tuple(map(record.get, RESULT_COLUMNS))
    texts: dict[tuple[Status, Reason | None], tuple[str, str | None, str | None]] = {}
    for rows in source.batches(batch_size=BATCH_ROWS, limit=limit):
        outcomes: list[Outcome] = preparer.outcomes(
            [row for row in rows if row.row not in settled] if settled else rows
        )
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
        if on_batch is not None:
            on_batch(values)
        yield from values


async def write_report(
    job: Job,
    settings: Settings,
    source: InputSource,
    identity: RunIdentity,
    mode: Mode,
    progress: Progress,
    *,
    handle_signals: bool,
    started: float,
    columns: Sequence[str] = RESULT_COLUMNS,
) -> Summary:
    """Judge every row of ``source`` and write the result file; return the job's summary.

    Without an ``out_path`` (``validate`` without ``--out``) the rows are judged and counted,
    and nothing is written anywhere.
    """
    out_path = job.out_path
    short = short_sheet(out_path, settings.short_out, settings.columns)  # --columns: its columns
    moved: tuple[Path, ...] = ()
    if out_path is not None:
        journal = await anyio.to_thread.run_sync(
            lambda: Journal.open(
                out_path,
                identity,
                restart=settings.restart,
                replaceable=True,
                resume=False,  # nothing to resume; a record of changes is refused, never replaced
            )
        )
        journal.close()
        journal.path.unlink(missing_ok=True)
        moved = tuple(journal.moved)
    limit = settings.limit
    repeated = await anyio.to_thread.run_sync(source.repeated_login_ids, limit)
    total = await anyio.to_thread.run_sync(source.count_rows, limit)
    preparer = Preparer(_rules(settings, mode), repeated)
    log.info(
        "run_started",
        command=job.command,
        input=str(job.input_path),
        rows=total,
        resumed=False,
        already_final=0,
        dry_run=mode is Mode.DRY_RUN,
        plan=False,
        lookup=False,  # validate and dry runs read no user
        api=job.api,
    )
    progress.start(total, done=0, calls_per_second=None)
    counts: collections.Counter[str] = collections.Counter()
    stop = threading.Event()
    status_at = RESULT_COLUMNS.index("status")
    listening = not isinstance(progress, NullProgress)
    # without a report file the summary lists the first rows that are not valid
    not_valid: list[NotValidRow] | None = [] if out_path is None else None

    def on_batch(values: list[Values]) -> None:
        if stop.is_set():
            raise _Stopped
        counts.update(map(operator.itemgetter(status_at), values))
        if not_valid is not None and len(not_valid) < SHOWN_ROWS:
            _keep_not_valid(values, not_valid)
        # a result per row only for a listener (the CLI's bar, validate's list of bad rows)
        if listening:
            results = [_result(value) for value in values]
            anyio.from_thread.run_sync(_advance, progress, results)

    rows = report_rows(source, preparer, limit=limit, on_batch=on_batch)
    if tuple(columns) != RESULT_COLUMNS:
        rows = map(_projection(columns), rows)
    written = False
    try:
        async with anyio.create_task_group() as group:
            if handle_signals and threading.current_thread() is threading.main_thread():
                group.start_soon(_watch_signals, stop)
            with contextlib.suppress(_Stopped):
                await anyio.to_thread.run_sync(_write_or_count, rows, out_path, columns, short)
                written = True
            group.cancel_scope.cancel()
    finally:
        progress.close()
    if not written:  # the rows not reached, as a stopped run counts them
        counts[Status.NOT_ATTEMPTED.value] += total - sum(counts.values())
    ok = {status.value for status in SUCCESS_STATUSES}
    exit_code = 0 if all(status in ok for status in counts) else 1
    if not written:
        exit_code = _EXIT_INTERRUPTED
    summary = Summary(
        input_rows=total,
        counts=dict(counts),
        requests=0,
        rate_limited=0,
        elapsed_s=time.monotonic() - started,
        exit_code=exit_code,
        result_path=str(out_path) if written and out_path is not None else None,
        stopped_reason=None if written else "interrupted",
        moved_aside=tuple(str(path) for path in moved),
        short_path=str(short.path) if written and short is not None else None,
        next_step=next_step(exit_code, resumable=False),  # nothing was sent, nothing kept
        not_valid=tuple(not_valid) if not_valid is not None else None,
    )
    log.info("run_finished", **summary.to_json())
    return summary


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
    rows: Iterator[Values],
    out_path: Path | None,
    columns: Sequence[str],
    short: ShortSheet | None = None,
) -> None:
    if out_path is None:
        collections.deque(rows, maxlen=0)  # judged and counted (on_batch), written nowhere
    else:
        write_rows(rows, out_path, columns=columns, short=short)


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


def _projection(columns: Sequence[str]) -> Callable[[Values], Values]:
    where = {name: index for index, name in enumerate(RESULT_COLUMNS)}

    def project(values: Values) -> Values:
        return tuple(values[where[name]] if name in where else None for name in columns)

    return project


async def _watch_signals(stop: threading.Event) -> None:
    with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async for signum in signals:
            stop.set()
            log.warning("interrupted", signal=signal.Signals(signum).name, action="stopping")
