"""The one place that knows every stage: reader -> rules -> screen -> pool -> journal -> writer.

``execute`` runs one job (``run``, ``validate``, ``plan`` or ``undo``) and returns its ``Summary``;
the screen (``plan``) reads users before anything is sent, and updates go one per call or in
batches (``batch``), after a canary (``canary``) when asked. It raises
``BatchphoneError`` subclasses for everything that stops a run before its first call. Once the
pool has started, every way out (done, Ctrl-C, SIGTERM, a fatal API answer, the circuit breaker)
goes through the same ``finally``: the journal is closed and the result file written, so every
input row has its one result row.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import structlog
from anyio.abc import ObjectSendStream

from batchphone.canary import Canary
from batchphone.config import Settings
from batchphone.errors import BatchphoneError, UsageError
from batchphone.job import Job, job_mode, prepared_batches, screen_rules
from batchphone.journal import Journal, RunLock, iter_records
from batchphone.models import (
    LOOKUP_COLUMNS,
    RESULT_COLUMNS,
    SUCCESS_STATUSES,
    Reason,
    RowResult,
    Status,
    Summary,
    UpdateRequest,
)
from batchphone.plan import Screen, ScreenRules, budget_seconds, planned_calls
from batchphone.pool import run_pool
from batchphone.prepare import Mode, Prepared
from batchphone.progress import NullProgress, Progress
from batchphone.reader import InputSource, InputSpec, open_input
from batchphone.report import local_report, write_report
from batchphone.send import Control, Sender, not_attempted
from batchphone.undo import UndoSource, open_results
from batchphone.writer import check_output_path, write_results

__all__ = ["EXIT_INTERRUPTED", "Job", "execute", "run_sync"]

EXIT_INTERRUPTED = 130

log = structlog.get_logger("batchphone")


def _identity(
    job: Job, settings: Settings, source: InputSource | UndoSource, target: dict[str, Any]
) -> dict[str, Any]:
    return {
        "command": job.command,
        "input_name": job.input_path.name,
        "input_sha256": source.content_hash(),
        "project_id": target.get("project_id"),
        "base_url": target.get("base_url"),
        "login_id_column": settings.login_id_column,
        "phone_column": settings.phone_column,
        "default_region": settings.default_region,
        "verified": settings.verified,
        "allow_merge": settings.allow_merge,
        "allow_remove": settings.allow_remove,
        "dry_run": settings.dry_run or job.command in ("validate", "plan"),
        "skip_unchanged": job.skip_unchanged,
        "api": job.api,
        "batch_size": job.batch_size if job.api == "batch" else None,
    }


class _Run:
    """The state of one executing run: built by ``execute``, used by the pool's callbacks."""

    def __init__(
        self,
        job: Job,
        settings: Settings,
        prepared: Iterator[list[Prepared]],
        journal: Journal,
        progress: Progress,
        total: int,
        rules: ScreenRules,
    ) -> None:
        self.job = job
        self.settings = settings
        self.prepared = prepared
        self.journal = journal
        self.progress = progress
        self.total = total
        self.rules = rules
        self.control = Control()
        self.sender: Sender | None = None
        self.screen: Screen | None = None
        self.canary: Canary | None = None
        self._pending: list[UpdateRequest] = []  # the batch being filled

    # -- producer -------------------------------------------------------------------------
    def _batches(self) -> Iterator[list[Prepared]]:
        for items in self.prepared:
            yield self._keep(items)

    def _keep(self, items: list[Prepared]) -> list[Prepared]:
        state, retry = self.journal.state, self.settings.retry_failed
        return [item for item in items if not state.is_final(item.row, retry_failed=retry)]

    async def produce(self, jobs: ObjectSendStream[Any], results: ObjectSendStream[Any]) -> None:
        batches = self._batches()
        while True:
            # reading and normalizing a batch is blocking work: keep it off the event loop
            items = await anyio.to_thread.run_sync(next, batches, None)
            if items is None:
                break
            if self.screen is not None:
                await self._take_screened(items, jobs)
                continue
            for index, item in enumerate(items):
                # rows that need no call are recorded right here: a trip through the result
                # stream costs more than the row itself (validate and dry-runs are all such rows)
                if isinstance(item, RowResult):
                    self.record(item)
                else:
                    await self._send(item, jobs)
                if index % 1000 == 999:
                    await anyio.lowlevel.checkpoint()
        await self._flush(jobs)
        await self._check_canary()

    async def _take_screened(self, items: Iterable[Prepared], jobs: ObjectSendStream[Any]) -> None:
        assert self.screen is not None
        # closed even when the run is cancelled halfway through a batch
        async with contextlib.aclosing(self.screen.screen(items)) as screened:
            index = 0
            async for item in screened:
                if isinstance(item, RowResult):
                    self.record(item)
                else:
                    await self._send(item, jobs)
                index += 1
                if index % 1000 == 0:  # runs of rows resolved locally must not hog the loop
                    await anyio.lowlevel.checkpoint()

    async def _send(self, request: UpdateRequest, jobs: ObjectSendStream[Any]) -> None:
        if self.control.stop_reason is not None:
            self.record(not_attempted(request, self.control.stop_reason))
            return
        if self.sender is None or self.sender.batch is None:
            await jobs.send(request)
        else:
            self._pending.append(request)
            if len(self._pending) >= self.job.batch_size:
                await self._flush(jobs)
        if self.canary is not None and self.canary.admit(request):
            await self._flush(jobs)
            await self._check_canary()

    async def _flush(self, jobs: ObjectSendStream[Any]) -> None:
        if self._pending:
            batch, self._pending = self._pending, []
            await jobs.send(batch)

    async def _check_canary(self) -> None:
        """Hold the producer until the canary rows are done, read them back, stop on a miss."""
        canary, sender = self.canary, self.sender
        if canary is None or canary.checked or not canary.sent or sender is None:
            return
        if self.control.stop_reason is not None:
            return  # stopping anyway: no verdict, and no reads
        await canary.wait()
        bad = await canary.check(sender.lookup.read_back, on_fatal=sender.fatal)
        for result in bad:
            self.record(result, advance=False)  # the row was counted once already
        if not bad:
            log.info("canary_passed", rows=len(canary.sent))
            return
        log.error("canary_failed", rows=len(canary.sent), mismatches=len(bad))
        if self.control.fatal is None:
            self.control.fatal = BatchphoneError(
                f"canary: {len(bad)} of {len(canary.sent)} updates did not stick; first: "
                f"{bad[0].error_message}; the remaining rows were not sent: find the cause, "
                "then rerun the same command to resume"
            )
        self.control.stop(Reason.STOPPED, hard=False)

    # -- consumer -------------------------------------------------------------------------
    async def consume(self, result: RowResult) -> None:
        self.record(result)

    async def consume_batch(self, results: list[RowResult]) -> None:
        for result in results:
            self.record(result)

    def record(self, result: RowResult, *, advance: bool = True) -> None:
        """Journal a final result. Synchronous (no await), so the producer's and the consumer's
        records never interleave within a line."""
        self.journal.append(result, ts=time.time(), urgent=result.attempts > 0)
        if self.canary is not None:
            self.canary.observe(result)
        if result.status is Status.FAILED:
            log.info(
                "row_failed",
                row=result.row,
                reason=result.reason,
                http_status=result.http_status,
                error_code=result.error_code,
            )
        if advance:
            self.progress.advance(result)

    # -- signals and housekeeping ---------------------------------------------------------
    async def watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                hard = self.control.interrupted
                self.control.interrupted = True
                self.control.stop(Reason.INTERRUPTED, hard=hard)
                log.warning(
                    "interrupted",
                    signal=signal.Signals(signum).name,
                    action="cancelling calls in flight" if hard else "finishing calls in flight",
                )

    async def sync_journal(self) -> None:
        while True:
            await anyio.sleep(1.0)
            self.journal.flush()  # here, on the loop: the buffer is not thread-safe
            await anyio.to_thread.run_sync(self.journal.fsync)


def _counts(journal: Journal, total: int) -> dict[str, int]:
    """Rows by last journaled status, over rows 1..total (a row never journaled: not_attempted)."""
    codes = bytes(journal.state.statuses[1 : total + 1]).ljust(total, b"\0")
    counts: dict[str, int] = {}
    for status in Status:
        n = codes.count(bytes([journal.state.code(status)]))
        if status is Status.NOT_ATTEMPTED:
            n += codes.count(b"\0")
        if n:
            counts[status.value] = n
    return counts


def _exit_code(counts: dict[str, int], control: Control) -> int:
    if control.interrupted:
        return EXIT_INTERRUPTED
    if control.fatal is not None:
        return control.fatal.exit_code
    ok = {status.value for status in SUCCESS_STATUSES}
    return 0 if all(status in ok for status, n in counts.items() if n) else 1


def _connect(
    run: _Run,
    settings: Settings,
    target: dict[str, Any],
    transport: httpx.AsyncBaseTransport | None,
    mode: Mode,
) -> Sender:
    sender = Sender(
        settings,
        target,
        transport,
        control=run.control,
        progress=run.progress,
        call_times=run.journal.state.call_times,
        batches=mode is Mode.RUN and run.job.api == "batch",
    )
    run.sender = sender
    if run.rules.active:
        run.screen = Screen(
            run.rules,
            sender.lookup,
            stopped=lambda: run.control.stop_reason,
            on_fatal=sender.fatal,
            observe=sender.trip_circuit,
        )
    if mode is Mode.RUN and run.job.canary:
        run.canary = Canary(run.job.canary)
    return sender


def _target(settings: Settings, needs_api: bool) -> dict[str, Any]:
    if not needs_api:
        return {"project_id": settings.project_id, "base_url": settings.base_url}
    if not settings.project_id:
        raise UsageError(
            "no project id: set DESCOPE_PROJECT_ID, project_id in config.toml, or --project-id",
            setting="project_id",
        )
    if settings.management_key is None:
        raise UsageError(
            "no management key: set DESCOPE_MANAGEMENT_KEY or use --management-key-file PATH",
            setting="management_key",
        )
    from batchphone.client import derive_base_url

    return {
        "project_id": settings.project_id,
        "base_url": settings.base_url or derive_base_url(settings.project_id),
        "management_key": settings.management_key.reveal(),
    }


async def execute(
    job: Job,
    settings: Settings,
    *,
    progress: Progress | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    target: dict[str, Any] | None = None,
    handle_signals: bool = False,
) -> Summary:
    """Run ``job`` to the end and return its summary.

    ``transport`` and ``target`` (``project_id``, ``base_url``, ``management_key``) replace the
    settings' target: the embedded emulator and the tests use them. ``handle_signals`` makes
    SIGINT/SIGTERM stop the run gracefully (only from the main thread).
    """
    progress = progress or NullProgress()
    started = time.monotonic()
    mode = job_mode(job, settings)
    needs_api = mode in (Mode.RUN, Mode.PLAN)
    target = target if target is not None else _target(settings, needs_api)
    await anyio.to_thread.run_sync(check_output_path, job.out_path, job.input_path)
    source: InputSource | UndoSource
    if job.command == "undo":
        source = await anyio.to_thread.run_sync(open_results, job.input_path)
    else:
        spec = InputSpec(
            path=job.input_path,
            login_id_column=settings.login_id_column,
            phone_column=settings.phone_column,
        )
        source = await anyio.to_thread.run_sync(open_input, spec)
    identity = await anyio.to_thread.run_sync(_identity, job, settings, source, target)
    lock = RunLock(job.out_path)
    await anyio.to_thread.run_sync(lock.acquire)
    try:
        return await _execute_locked(
            job,
            settings,
            source,
            identity,
            target,
            mode,
            progress,
            transport,
            handle_signals,
            started,
        )
    finally:
        lock.release()


async def _execute_locked(
    job: Job,
    settings: Settings,
    source: InputSource | UndoSource,
    identity: dict[str, Any],
    target: dict[str, Any],
    mode: Mode,
    progress: Progress,
    transport: httpx.AsyncBaseTransport | None,
    handle_signals: bool,
    started: float,
) -> Summary:
    if local_report(mode, source):  # validate and dry runs: no journal, no pool (report.py)
        assert isinstance(source, InputSource)
        return await write_report(
            job,
            settings,
            source,
            identity,
            mode,
            progress,
            handle_signals=handle_signals,
            started=started,
        )
    journal = Journal.open(
        job.out_path,
        identity,
        # validate has nothing to resume: reading an old report's journal would be wasted time
        restart=settings.restart or mode is Mode.VALIDATE,
        replaceable=mode is not Mode.RUN,
    )
    prepared, total = await anyio.to_thread.run_sync(prepared_batches, source, settings, mode)
    rules = screen_rules(job, settings, mode)
    run = _Run(job, settings, prepared, journal, progress, total, rules)
    done = total - sum(
        n for status, n in _counts(journal, total).items() if status == Status.NOT_ATTEMPTED.value
    )
    log.info(
        "run_started",
        command=job.command,
        input=str(job.input_path),
        rows=total,
        resumed=journal.resumed,
        already_final=done,
        dry_run=mode is Mode.DRY_RUN,
        plan=mode is Mode.PLAN,
        skip_unchanged=job.skip_unchanged,
        api=job.api,
    )
    needs_api = mode in (Mode.RUN, Mode.PLAN)
    progress.start(
        total,
        done=done,
        calls_per_second=settings.rate_calls / settings.rate_period if needs_api else None,
    )
    # the before-image columns come with every read of the users' state
    columns = RESULT_COLUMNS + LOOKUP_COLUMNS if rules.compare else RESULT_COLUMNS
    try:
        if needs_api:
            _connect(run, settings, target, transport, mode)
        async with anyio.create_task_group() as group:
            if handle_signals and threading.current_thread() is threading.main_thread():
                group.start_soon(run.watch_signals)
            group.start_soon(run.sync_journal)
            await _run_pool(run, mode)
            group.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            if run.sender is not None:
                await run.sender.aclose()
            journal.close()
            await anyio.to_thread.run_sync(_write, job.out_path, journal, total, columns)
            progress.close()
    counts = _counts(journal, total)
    planned: int | None = None
    planned_s: float | None = None
    if mode is Mode.PLAN:
        planned = planned_calls(counts, batch_size=job.batch_size if job.api == "batch" else None)
        window = settings.rate_period * (1 + settings.rate_margin)
        planned_s = budget_seconds(planned, settings.rate_calls, window)
    sender = run.sender
    summary = Summary(
        input_rows=total,
        counts=counts,
        requests=sender.client.requests if sender is not None else 0,
        rate_limited=sender.rate_limited if sender is not None else 0,
        elapsed_s=time.monotonic() - started,
        exit_code=_exit_code(counts, run.control),
        result_path=str(job.out_path),
        resumed_rows=done,
        stopped_reason=run.control.fatal.message
        if run.control.fatal
        else ("interrupted" if run.control.interrupted else None),
        planned_calls=planned,
        planned_s=planned_s,
    )
    log.info("run_finished", **summary.to_json())
    return summary


async def _run_pool(run: _Run, mode: Mode) -> None:
    sender = run.sender
    if sender is None:  # nothing to send: the producer records every row itself
        await run_pool(run.produce, _never, run.consume, concurrency=1)
        return
    await sender.fetch_license()
    concurrency = run.settings.concurrency if mode is Mode.RUN else 1
    if sender.batch is not None:
        await run_pool(
            run.produce, sender.process_batch, run.consume_batch, concurrency=concurrency
        )
    else:
        await run_pool(run.produce, sender.process, run.consume, concurrency=concurrency)


async def _never(request: UpdateRequest) -> RowResult:
    raise AssertionError(f"row {request.row}: a run that sends nothing got a row to send")


def _write(out_path: Path, journal: Journal, total: int, columns: tuple[str, ...]) -> int:
    records = (r for r in iter_records(journal.path) if r["row"] <= total)
    written: int = write_results(records, out_path, columns=columns)
    return written


def run_sync(
    job: Job,
    settings: Settings,
    *,
    progress: Progress | None = None,
    transport_factory: Callable[[], httpx.AsyncBaseTransport] | None = None,
    target: dict[str, Any] | None = None,
) -> Summary:
    """``execute`` on a fresh event loop (asyncio), with signal handling: for the CLI."""

    async def main() -> Summary:
        transport = transport_factory() if transport_factory else None
        return await execute(
            job,
            settings,
            progress=progress,
            transport=transport,
            target=target,
            handle_signals=True,
        )

    return anyio.run(main, backend="asyncio")
