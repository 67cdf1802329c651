"""The one place that knows every stage: reader -> rules -> screen -> pool -> journal -> writer.

``execute`` runs one ``CommandPlan`` (``command.decide``: ``run``, ``validate``, ``plan`` or
``undo``) and returns its ``Summary``. It opens the input and takes the result file's lock,
then judges the rows one of two ways, both ended by ``ending.run_to_end`` (one ``Stop``, one
signal watcher, the same log events, exit code and summary): ``validate`` and dry runs write
their report straight from the rows (``report.write_report``); every other command goes
through the worker pool (``_through_pool``): the screen (``plan``) reads users before anything
is sent, and updates go one per call or in batches, after a canary when asked.

It raises ``BatchphoneError`` subclasses for everything that stops a run before its first call.
Once the pool has started, every way out (done, Ctrl-C, SIGTERM, a fatal API answer, the
circuit breaker, a local fault) goes through the same ``finally``: the journal is closed and the
result file written (``outfile``), so every input row has its one result row.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import httpx

from batchphone.errors import UsageError
from batchphone.files.journal import Journal, RunIdentity
from batchphone.files.lock import RunLock
from batchphone.files.reader import InputSource, InputSpec, open_input
from batchphone.files.writer import check_output_path, check_sheet_rows
from batchphone.models import Command, Status, Summary
from batchphone.modes.command import CommandPlan, run_identity
from batchphone.modes.dispatch import Dispatch
from batchphone.modes.ending import Tally, log_started, run_to_end
from batchphone.modes.faults import Faults, journal_failed
from batchphone.modes.job import prepared_batches
from batchphone.modes.outfile import Unreached, Written, write_somewhere
from batchphone.modes.producer import Producer
from batchphone.modes.recorder import OPEN, Recorder
from batchphone.modes.report import write_report
from batchphone.modes.reverse import UndoSource, open_results
from batchphone.modes.sending import Sending, connect, one_error, pool, sync_journal
from batchphone.progress import NullProgress, Progress
from batchphone.remote.canary import Canary
from batchphone.remote.screen import budget_seconds, planned_calls
from batchphone.remote.stop import STOP_SIGNALS, Stop
from batchphone.rows.prepare import Mode, Prepared

__all__ = ["execute", "run_sync"]


async def execute(
    plan: CommandPlan,
    *,
    progress: Progress | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    handle_signals: bool = False,
) -> Summary:
    """Run ``plan`` to the end and return its summary.

    ``transport`` carries the calls (the embedded emulator and the tests pass theirs);
    ``handle_signals`` makes SIGINT/SIGTERM stop the run gracefully (only from the main thread).
    """
    progress = progress or NullProgress()
    started = time.monotonic()
    source = await _open(plan)
    identity = await anyio.to_thread.run_sync(run_identity, plan, source)
    out_path = plan.job.out_path
    # validate without a report file writes nothing: no file to lock
    lock = RunLock(out_path) if out_path is not None else None
    if lock is not None:
        await anyio.to_thread.run_sync(lock.acquire)
    try:
        stop = Stop()

        async def body() -> Tally:
            if plan.local:  # validate and dry runs: no journal, no pool (report.py)
                assert isinstance(source, InputSource)
                return await write_report(plan, source, identity, progress, stop)
            return await _through_pool(plan, source, identity, progress, transport, stop)

        return await run_to_end(plan, stop, body, handle_signals=handle_signals, started=started)
    finally:
        if lock is not None:
            lock.release()


async def _open(plan: CommandPlan) -> InputSource | UndoSource:
    """Check the output paths and open the input (for ``undo``: a result file)."""
    job, settings = plan.job, plan.settings
    if job.out_path is not None:
        await anyio.to_thread.run_sync(check_output_path, job.out_path, job.input_path)
    if plan.short is not None:
        await anyio.to_thread.run_sync(check_output_path, plan.short.path, job.input_path)
    source: InputSource | UndoSource
    if job.command is Command.UNDO:
        source = await anyio.to_thread.run_sync(open_results, job.input_path)
    else:
        spec = InputSpec(
            path=job.input_path,
            login_id_column=settings.login_id_column,
            phone_column=settings.phone_column,
            sheet=settings.sheet,
            delimiter=settings.delimiter,
        )
        source = await anyio.to_thread.run_sync(open_input, spec)
    if job.out_path is not None and job.out_path.suffix.lower() == ".xlsx":
        # known before the first call, not after the last one (the count is kept for later)
        rows = await anyio.to_thread.run_sync(source.count_rows, settings.limit)
        check_sheet_rows(job.out_path, rows)
    return source


async def _through_pool(
    plan: CommandPlan,
    source: InputSource | UndoSource,
    identity: RunIdentity,
    progress: Progress,
    transport: httpx.AsyncBaseTransport | None,
    stop: Stop,
) -> Tally:
    """Every row through the journal and the worker pool; the result file from the journal."""
    settings = plan.settings
    journal = _open_journal(plan, identity, stop)
    prepared, total = await anyio.to_thread.run_sync(prepared_batches, source, settings, plan.rows)
    _refuse_shrinking(journal, plan, total)
    canary = Canary(plan.job.canary) if plan.sends and plan.job.canary else None
    recorder = Recorder(journal, progress, canary, hold=settings.timeout)
    done = total - _open_rows(journal, total, retry_failed=settings.retry_failed)
    log_started(plan, rows=total, resumed=journal.resumed, already_final=done)
    rate = settings.rate_calls / settings.rate_period
    progress.start(total, done=done, calls_per_second=rate if plan.calls_api else None)
    faults = Faults(stop, sends=plan.sends)
    sending: Sending | None = None
    try:
        if plan.calls_api:
            sending = connect(plan, transport, stop, recorder)
        await _pool(plan, prepared, recorder, sending, faults, stop)
    finally:
        with anyio.CancelScope(shield=True):
            written = await _close(plan, source, recorder, sending, total, faults, stop)
    result_path = faults.settle(written, _out(plan))
    return _pool_tally(
        plan, journal, total, done, recorder, sending, result_path, written, faults.where
    )


def _open_journal(plan: CommandPlan, identity: RunIdentity, stop: Stop) -> Journal:
    settings = plan.settings
    journal = Journal.open(
        _out(plan),
        identity,
        restart=settings.restart,
        replaceable=not plan.sends,
        resume=plan.mode is not Mode.VALIDATE,  # validate has nothing to resume
        rate=f"{settings.rate_calls}/{settings.rate_period:g}",
    )
    journal.on_failure = journal_failed(journal, stop)
    return journal


async def _pool(
    plan: CommandPlan,
    prepared: Iterator[list[Prepared]],
    recorder: Recorder,
    sending: Sending | None,
    faults: Faults,
    stop: Stop,
) -> None:
    """The producer, the workers and the recorder, with the journal synced every second."""
    journal = recorder.journal
    batches = sending is not None and sending.sender.batch is not None
    producer = Producer(
        prepared,
        journal,
        stop,
        Dispatch(recorder.pending, plan.job.batch_size if batches else None),
        retry_failed=plan.settings.retry_failed,
        lookup=sending.settle if sending is not None else None,
        screen=sending.screen if sending is not None else None,
        canary=sending.canary if sending is not None else None,
    )
    concurrency = plan.settings.concurrency if plan.sends else 1
    with one_error():
        async with anyio.create_task_group() as group:
            group.start_soon(sync_journal, journal)
            await pool(producer, recorder, sending, concurrency, faults)
            group.cancel_scope.cancel()


async def _close(
    plan: CommandPlan,
    source: InputSource | UndoSource,
    recorder: Recorder,
    sending: Sending | None,
    total: int,
    faults: Faults,
    stop: Stop,
) -> Written:
    """The pool's end, whichever way it came: the call stack and journal closed, the result
    file written (run shielded by the caller)."""
    journal = recorder.journal
    if sending is not None:
        await sending.calls.aclose()
    recorder.journal_open = False
    journal.close()  # a failed journal (on_failure set) does not raise
    unreached = Unreached(source, plan.settings, journal, total, stop.reason)
    written = await anyio.to_thread.run_sync(
        write_somewhere,
        _out(plan),
        journal,
        total,
        unreached,
        plan.columns,
        faults.sent,
        plan.short,
    )
    recorder.progress.close()
    return written


def _pool_tally(
    plan: CommandPlan,
    journal: Journal,
    total: int,
    done: int,
    recorder: Recorder,
    sending: Sending | None,
    result_path: str | None,
    written: Written,
    where: str | None,
) -> Tally:
    counts = _counts(journal, total)
    planned: int | None = None
    planned_s: float | None = None
    if plan.is_plan:
        texts = {status.value: n for status, n in counts.items()}
        planned = planned_calls(texts, batch_size=plan.batch_size)
        settings = plan.settings
        window = settings.rate_period * (1 + settings.rate_margin)
        planned_s = budget_seconds(planned, settings.rate_calls, window)
    count = sending.calls.count if sending is not None else None
    short = plan.short
    return Tally(
        total=total,
        counts=counts,
        result_path=result_path,
        requests=count.calls if count is not None else 0,
        rate_limited=count.rate_limited if count is not None else 0,
        resumed_rows=done,
        moved_aside=tuple(str(path) for path in journal.moved),
        sent_now=recorder.sent,
        # written with the result file at --out (a copy in the temp folder has none)
        short_path=str(short.path) if short and written.path == _out(plan) else None,
        planned_calls=planned,
        planned_s=planned_s,
        where=where,
    )


def _out(plan: CommandPlan) -> Path:
    out_path = plan.job.out_path
    assert out_path is not None  # only a validate goes without one (a local report)
    return out_path


def _refuse_shrinking(journal: Journal, plan: CommandPlan, total: int) -> None:
    """``--limit`` on a resumed run may grow, never shrink, the result file (the journal's
    rows past it would be dropped from it): refused before any call."""
    limit = plan.settings.limit
    if limit is None or not journal.resumed:
        return
    held = len(journal.state.statuses.rstrip(b"\0")) - 1  # the highest row journaled
    if held > total:
        journal.close()
        raise UsageError(
            f"limit={limit}: the journal of {_out(plan)} holds rows up to {held}, "
            f"which its result file keeps: give limit={held} or more, or no limit=...",
            setting="limit",
        )


def _open_rows(journal: Journal, total: int, *, retry_failed: bool) -> int:
    """Rows the run still has to do: never journaled, left open, or (``retry_failed``) failed."""
    open_ = set(OPEN)
    if retry_failed:  # they are sent again: not done yet (as Journal.is_final says)
        open_.add(Status.FAILED)
    return sum(n for status, n in _counts(journal, total).items() if status in open_)


def _counts(journal: Journal, total: int) -> dict[Status, int]:
    """Rows by last journaled status, over rows 1..total (a row never journaled: not_attempted)."""
    codes = bytes(journal.state.statuses[1 : total + 1]).ljust(total, b"\0")
    counts: dict[Status, int] = {}
    for status in Status:
        n = codes.count(bytes([journal.state.code(status)]))
        if status is Status.NOT_ATTEMPTED:
            n += codes.count(b"\0")
        if n:
            counts[status] = n
    return counts


def _run_joined(main: Callable[[], Awaitable[Summary]]) -> Summary:
    """``main`` on a fresh asyncio loop; then wait for the worker threads it started.

    anyio tells its worker threads (``to_thread``) to stop when the loop's main task ends, but
    does not wait for them: a library call must leave no thread behind.
    """
    loops: list[asyncio.AbstractEventLoop] = []

    async def on_loop() -> Summary:
        loops.append(asyncio.get_running_loop())
        return await main()

    try:
        return anyio.run(on_loop, backend="asyncio")
    finally:
        for thread in threading.enumerate():
            if loops and getattr(thread, "loop", None) is loops[0]:  # anyio's WorkerThread
                thread.join(timeout=15)


def run_sync(
    plan: CommandPlan,
    *,
    progress: Progress | None = None,
    transport_factory: Callable[[], httpx.AsyncBaseTransport] | None = None,
    handle_signals: bool = False,
) -> Summary:
    """``execute`` on a fresh event loop (asyncio).

    ``handle_signals``: SIGINT/SIGTERM stop the run gracefully (the CLI asks for it), and the
    caller's handlers are put back afterwards; without it they stay as they are.
    """

    async def main() -> Summary:
        transport = transport_factory() if transport_factory else None
        return await execute(
            plan, progress=progress, transport=transport, handle_signals=handle_signals
        )

    if not (handle_signals and threading.current_thread() is threading.main_thread()):
        return _run_joined(main)
    # the event loop resets the signals it handled to their defaults (SIGTERM: kill) on exit
    handlers = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    try:
        return _run_joined(main)
    finally:
        for signum, handler in handlers.items():
            if handler is not None:
                signal.signal(signum, handler)
