"""The one place that knows every stage: reader -> rules -> screen -> pool -> journal -> writer.

``execute`` runs one job (``run``, ``validate``, ``plan`` or ``undo``) and returns its ``Summary``;
the screen (``plan``) reads users before anything is sent, and updates go one per call or in
batches (``batch``), after a canary (``canary``) when asked. It raises
``BatchphoneError`` subclasses for everything that stops a run before its first call. Once the
pool has started, every way out (done, Ctrl-C, SIGTERM, a fatal API answer, the circuit breaker)
goes through the same ``finally``: the journal is closed and the result file written, so every
input row has its one result row.

The pieces, each with one job, wired here: ``_Producer`` (rows not final yet, through the
screen, to the workers; rows settled without a call go on as ``_Settled`` groups),
``_Batcher`` (``--api batch``), ``_CanaryCheck`` (``--canary``), ``_Recorder`` (the pool's
consumer and the only writer of row results: journal, canary, progress), ``_watch_signals`` and
``_sync_journal``; the sending side (``_Sending``) is one call stack (``calls``) and what
reads and sends through it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
from anyio.abc import ObjectSendStream

from batchphone.batch import BatchSender
from batchphone.calls import Calls, open_calls
from batchphone.canary import Canary
from batchphone.config import Endpoint, Settings
from batchphone.errors import BatchphoneError, UsageError
from batchphone.job import BATCH_ROWS, Job, job_mode, prepared_batches, screen_rules
from batchphone.journal import Journal, RunIdentity, RunLock, iter_records
from batchphone.logs import get_logger
from batchphone.lookup import Lookup
from batchphone.models import (
    RESULT_COLUMNS,
    SUCCESS_STATUSES,
    Command,
    Reason,
    RowResult,
    Status,
    Summary,
    UpdateRequest,
)
from batchphone.pool import run_pool
from batchphone.prepare import Mode, Prepared, now_iso
from batchphone.progress import NullProgress, Progress
from batchphone.reader import InputSource, InputSpec, open_input
from batchphone.report import local_report, write_report
from batchphone.reverse import UndoSource, open_results
from batchphone.screen import Screen, ScreenRules, budget_seconds, planned_calls
from batchphone.send import RowSender, fetch_license
from batchphone.stop import STOP_SIGNALS, Stop
from batchphone.writer import ShortSheet, check_output_path, short_sheet, write_results

__all__ = ["EXIT_INTERRUPTED", "Job", "execute", "run_sync"]

EXIT_INTERRUPTED = 130

log = get_logger()


def _identity(
    job: Job, settings: Settings, source: InputSource | UndoSource, target: Endpoint | None
) -> RunIdentity:
    return RunIdentity(
        command=job.command,
        input_name=job.input_path.name,
        input_sha256=source.content_hash(),
        # a job that calls nothing names the project its settings name, as given
        project_id=target.project_id if target is not None else settings.project_id,
        base_url=target.base_url if target is not None else settings.base_url,
        login_id_column=settings.login_id_column,
        phone_column=settings.phone_column,
        default_region=settings.default_region,
        verified=settings.verified,
        allow_merge=settings.allow_merge,
        allow_remove=settings.allow_remove,
        dry_run=settings.dry_run or job.command in (Command.VALIDATE, Command.PLAN),
        no_lookup=settings.no_lookup,
        api=job.api,
        batch_size=job.batch_size if job.api == "batch" else None,
        sheet=settings.sheet,
    )


@dataclass(frozen=True, slots=True)
class _Settled:
    """Rows settled without a worker, on their way to the consumer like any other result.

    Invalid and duplicate rows, what the screen decided (unchanged, not found, failed reads) and
    the canary's verdicts. ``counted``: the rows moved the progress bar once already (a canary
    verdict replaces the row's first result).
    """

    results: list[RowResult]
    counted: bool = False


#: What reaches the consumer: a worker's row, a worker's batch, or rows settled without one.
_Outcome = RowResult | list[RowResult] | _Settled


class _Recorder:
    """The consumer, and the only writer of row results: journal, canary, progress bar."""

    def __init__(self, journal: Journal, progress: Progress, canary: Canary | None) -> None:
        self.journal = journal
        self.progress = progress
        self.canary = canary
        self.journal_open = True

    async def consume(self, outcome: _Outcome) -> None:
        if isinstance(outcome, RowResult):
            self._record(outcome)
        elif isinstance(outcome, _Settled):
            for result in outcome.results:
                self._record(result, advance=not outcome.counted)
        else:
            for result in outcome:
                self._record(result)

    def _record(self, result: RowResult, *, advance: bool = True) -> None:
        self.journal.append(result, ts=time.time(), urgent=result.attempts > 0)
        if self.canary is not None:
            self.canary.observe(result)
        if result.status is Status.FAILED:
            # a warning, so that --quiet still shows it; no API text, which may echo the row
            log.warning(
                "row_failed",
                row=result.row,
                reason=result.reason,
                http_status=result.http_status,
                error_code=result.error_code,
            )
        # a row left unsent by a stop does not move the bar: it stays where the run stopped
        if advance and result.status is not Status.NOT_ATTEMPTED:
            self.progress.advance(result)

    def record_call(self, ts: float) -> None:
        """Journal the time an API call was answered (or given up): the limiter's seed."""
        if self.journal_open:
            self.journal.append_call(ts)


class _Batcher:
    """``--api batch``: collects requests into batches of ``size``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._pending: list[UpdateRequest] = []

    def add(self, request: UpdateRequest) -> list[UpdateRequest] | None:
        """Take ``request``; a full batch when it filled one."""
        self._pending.append(request)
        return self.flush() if len(self._pending) >= self.size else None

    def flush(self) -> list[UpdateRequest] | None:
        """The batch filled so far (``None`` when empty)."""
        batch, self._pending = self._pending, []
        return batch or None


class _CanaryCheck:
    """``--canary N``: once the first N updates are done, read them back; stop on a miss."""

    def __init__(self, canary: Canary, lookup: Lookup, stop: Stop) -> None:
        self.canary = canary
        self.lookup = lookup
        self.stop = stop

    def admit(self, request: UpdateRequest) -> bool:
        """Count ``request`` as sent; True when it filled the canary (time to ``check``)."""
        return self.canary.admit(request)

    async def check(self) -> list[RowResult]:
        """Wait until the canary rows are done and read them back; a miss stops the run.

        Returns the rows that did not stick, as their new (final) results.
        """
        canary = self.canary
        if canary.checked or not canary.sent or self.stop.reason is not None:
            return []  # nothing to check, or stopping anyway: no verdict, and no reads
        await canary.wait()
        bad = await canary.check(self.lookup.read_back)
        if not bad:
            log.info("canary_passed", rows=len(canary.sent))
            return []
        log.error("canary_failed", rows=len(canary.sent), mismatches=len(bad))
        # rows only: what differs names a login id and phones, and this message is logged
        # (the result file, 0600, has the details in error_message)
        self.stop.request(
            Reason.STOPPED,
            fatal=BatchphoneError(
                f"canary: {len(bad)} of {len(canary.sent)} updates did not stick (rows "
                f"{_rows(bad)}: see their error_message in the result file); the remaining "
                "rows were not sent: find the cause, then rerun the same command to resume"
            ),
        )
        return bad


class _Producer:
    """The producer: rows not final yet, through the screen, to the workers.

    Rows that need no worker (invalid, duplicate, what the screen settled, the canary's verdicts)
    go to the consumer as ``_Settled`` groups on the pool's result stream: one way for every
    result, and one stream trip per group rather than per row.
    """

    #: settled rows wait for at most this many more before they go to the consumer
    GROUP = 1000

    def __init__(
        self,
        prepared: Iterator[list[Prepared]],
        journal: Journal,
        settings: Settings,
        stop: Stop,
        *,
        screen: Screen | None = None,
        batcher: _Batcher | None = None,
        canary: _CanaryCheck | None = None,
    ) -> None:
        self.prepared = prepared
        self.journal = journal
        self.settings = settings
        self.stop = stop
        self.screen = screen
        self.batcher = batcher
        self.canary = canary
        self._settled: list[RowResult] = []

    def _batches(self) -> Iterator[list[Prepared]]:
        state, retry = self.journal.state, self.settings.retry_failed
        for items in self.prepared:
            yield [item for item in items if not state.is_final(item.row, retry_failed=retry)]

    async def produce(
        self, jobs: ObjectSendStream[Any], results: ObjectSendStream[_Outcome]
    ) -> None:
        # On a stop the producer just ends: rows it never reached are not journaled one by one
        # (the result file gets them as `not_attempted` when it is written, see `_Unreached`).
        batches = self._batches()
        while self.stop.reason is None:
            # reading and normalizing a batch is blocking work: keep it off the event loop
            items = await anyio.to_thread.run_sync(next, batches, None)
            if items is None:
                break
            if self.screen is not None:
                await self._take_screened(items, jobs, results)
            else:
                for item in items:
                    if self.stop.reason is not None:
                        break
                    await self._take(item, jobs, results)
            await self._flush_settled(results)
        if self.stop.reason is None:
            await self._flush(jobs)
            if self.canary is not None:
                await self._check_canary(results)
        await self._flush_settled(results)

    async def _take_screened(
        self,
        items: Iterable[Prepared],
        jobs: ObjectSendStream[Any],
        results: ObjectSendStream[_Outcome],
    ) -> None:
        assert self.screen is not None
        # closed even when the run is cancelled halfway through a batch
        async with contextlib.aclosing(self.screen.screen(items)) as screened:
            async for item in screened:
                # results the screen made before the stop (failed reads) are kept; what
                # comes after it would only be rows left unsent
                unsent = not isinstance(item, RowResult) or item.status is Status.NOT_ATTEMPTED
                if unsent and self.stop.reason is not None:
                    break
                await self._take(item, jobs, results)

    async def _take(
        self, item: Prepared, jobs: ObjectSendStream[Any], results: ObjectSendStream[_Outcome]
    ) -> None:
        if isinstance(item, RowResult):
            self._settled.append(item)
            if len(self._settled) >= self.GROUP:  # (the send is also the loop's checkpoint)
                await self._flush_settled(results)
            return
        await self._flush_settled(results)  # results go on in the order they were decided
        if self.stop.reason is not None:
            return  # not journaled: the result file lists it as not_attempted
        if self.batcher is None:
            await jobs.send(item)
        else:
            batch = self.batcher.add(item)
            if batch is not None:
                await jobs.send(batch)
        if self.canary is not None and self.canary.admit(item):
            await self._flush(jobs)
            await self._check_canary(results)

    async def _check_canary(self, results: ObjectSendStream[_Outcome]) -> None:
        assert self.canary is not None
        bad = await self.canary.check()
        if bad:  # each row was counted once already, by its first result
            await results.send(_Settled(bad, counted=True))

    async def _flush_settled(self, results: ObjectSendStream[_Outcome]) -> None:
        if self._settled:
            settled, self._settled = self._settled, []
            await results.send(_Settled(settled))

    async def _flush(self, jobs: ObjectSendStream[Any]) -> None:
        batch = self.batcher.flush() if self.batcher is not None else None
        if batch is not None:
            await jobs.send(batch)


async def _watch_signals(stop: Stop) -> None:
    """SIGINT/SIGTERM: the first stops the run gracefully, the second cancels calls in flight."""
    with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            hard = stop.interrupted
            in_flight = stop.in_flight
            stop.interrupted = True
            stop.request(Reason.INTERRUPTED, hard=hard)
            if hard:
                log.warning(
                    "interrupted",
                    signal=name,
                    action="cancelling calls in flight",
                    calls_in_flight=in_flight,
                )
            else:
                log.warning(
                    f"stopping: {in_flight} calls in flight; Ctrl-C again to cancel them",
                    signal=name,
                    calls_in_flight=in_flight,
                )


async def _sync_journal(journal: Journal) -> None:
    """Flush and fsync the journal every second while the run goes on."""
    while True:
        await anyio.sleep(1.0)
        journal.flush()  # here, on the loop: the buffer is not thread-safe
        await anyio.to_thread.run_sync(journal.fsync)


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


def _rows(results: list[RowResult], most: int = 5) -> str:
    numbers = ", ".join(str(r.line or r.row) for r in results[:most])
    return numbers + (", ..." if len(results) > most else "")


def _exit_code(counts: dict[str, int], stop: Stop) -> int:
    if stop.interrupted:
        return EXIT_INTERRUPTED
    if stop.fatal is not None:
        return stop.fatal.exit_code
    ok = {status.value for status in SUCCESS_STATUSES}
    return 0 if all(status in ok for status, n in counts.items() if n) else 1


@dataclass(frozen=True, slots=True)
class _Sending:
    """The sending side of a run: one call stack, and what reads and sends through it."""

    calls: Calls
    sender: RowSender
    screen: Screen | None
    canary: _CanaryCheck | None


def _connect(
    job: Job,
    settings: Settings,
    target: Endpoint,
    transport: httpx.AsyncBaseTransport | None,
    mode: Mode,
    rules: ScreenRules,
    stop: Stop,
    recorder: _Recorder,
) -> _Sending:
    """Wire the sending side: one call stack, and the readers and senders on top of it."""
    calls = open_calls(
        settings,
        target,
        transport,
        stop=stop,
        progress=recorder.progress,
        call_times=recorder.journal.state.call_times,
        on_call=recorder.record_call,
    )
    lookup = Lookup(calls)
    batches = mode is Mode.RUN and job.api == "batch"
    canary = recorder.canary
    return _Sending(
        calls=calls,
        sender=RowSender(calls, BatchSender(calls) if batches else None),
        screen=Screen(rules, lookup, stop=stop) if rules.active else None,
        canary=_CanaryCheck(canary, lookup, stop) if canary is not None else None,
    )


def _refuse_unstarted_emulator(settings: Settings, transport: object) -> None:
    """Settings that ask for a rehearsal never reach the project they name (or the network)."""
    if (settings.emulator or settings.emulator_state is not None) and transport is None:
        raise UsageError(
            "the settings ask for the emulator, but execute() starts none: call batchphone.run() "
            "(or plan, undo, validate), which does, or pass the emulator's transport and target",
            setting="emulator",
        )


def _target(settings: Settings) -> Endpoint:
    """The project the settings name, for a job that calls the API (``UsageError`` if none)."""
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

    return Endpoint(
        project_id=settings.project_id,
        base_url=settings.base_url or derive_base_url(settings.project_id),
        management_key=settings.management_key,  # a Secret until the header is built
    )


async def execute(
    job: Job,
    settings: Settings,
    *,
    progress: Progress | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    target: Endpoint | None = None,
    handle_signals: bool = False,
) -> Summary:
    """Run ``job`` to the end and return its summary.

    ``transport`` and ``target`` (the project to call) replace the settings' target: the
    embedded emulator and the tests use them. ``handle_signals`` makes SIGINT/SIGTERM stop the
    run gracefully (only from the main thread).
    """
    _refuse_unstarted_emulator(settings, transport)
    if target is not None and not isinstance(target, Endpoint):
        # a dict (what execute took before) would fail later, halfway into the journal
        raise UsageError("target: expected a batchphone.config.Endpoint", setting="target")
    progress = progress or NullProgress()
    started = time.monotonic()
    mode = job_mode(job, settings)
    needs_api = mode in (Mode.RUN, Mode.PLAN)
    if target is None and needs_api:
        target = _target(settings)
    if job.out_path is not None:
        await anyio.to_thread.run_sync(check_output_path, job.out_path, job.input_path)
    short = short_sheet(job.out_path, settings.short_out, settings.columns)
    if short is not None:
        await anyio.to_thread.run_sync(check_output_path, short.path, job.input_path)
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
    identity = await anyio.to_thread.run_sync(_identity, job, settings, source, target)
    # validate without a report file writes nothing: no file to lock
    lock = RunLock(job.out_path) if job.out_path is not None else None
    if lock is not None:
        await anyio.to_thread.run_sync(lock.acquire)
    try:
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
        if lock is not None:
            lock.release()


async def _execute_locked(
    job: Job,
    settings: Settings,
    source: InputSource | UndoSource,
    identity: RunIdentity,
    target: Endpoint | None,
    mode: Mode,
    progress: Progress,
    transport: httpx.AsyncBaseTransport | None,
    handle_signals: bool,
    started: float,
) -> Summary:
    out_path = job.out_path
    assert out_path is not None  # only a validate goes without one (a local report)
    journal = Journal.open(
        out_path,
        identity,
        restart=settings.restart,
        replaceable=mode is not Mode.RUN,
        resume=mode is not Mode.VALIDATE,  # validate has nothing to resume
    )
    prepared, total = await anyio.to_thread.run_sync(prepared_batches, source, settings, mode)
    rules = screen_rules(job, settings, mode)
    stop = Stop()
    canary = Canary(job.canary) if mode is Mode.RUN and job.canary else None
    recorder = _Recorder(journal, progress, canary)
    done = total - sum(
        n for status, n in _counts(journal, total).items() if status == Status.NOT_ATTEMPTED.value
    )
    log.info(
        "run_started",
        command=job.command.value,
        input=str(job.input_path),
        rows=total,
        resumed=journal.resumed,
        already_final=done,
        dry_run=mode is Mode.DRY_RUN,
        plan=mode is Mode.PLAN,
        lookup=rules.compare,
        api=job.api,
    )
    needs_api = mode in (Mode.RUN, Mode.PLAN)
    progress.start(
        total,
        done=done,
        calls_per_second=settings.rate_calls / settings.rate_period if needs_api else None,
    )
    # the before-image columns come with every read of the users' state; the result file has
    # them all (undo reads it), --columns picks those of the short sheet
    columns = RESULT_COLUMNS + rules.columns
    short = short_sheet(out_path, settings.short_out, settings.columns)
    sending: _Sending | None = None
    try:
        if needs_api:
            assert target is not None  # execute resolved it
            sending = _connect(job, settings, target, transport, mode, rules, stop, recorder)
        producer = _Producer(
            prepared,
            journal,
            settings,
            stop,
            screen=sending.screen if sending is not None else None,
            batcher=_Batcher(job.batch_size)
            if sending is not None and sending.sender.batch is not None
            else None,
            canary=sending.canary if sending is not None else None,
        )
        with _one_error():
            async with anyio.create_task_group() as group:
                if handle_signals and threading.current_thread() is threading.main_thread():
                    group.start_soon(_watch_signals, stop)
                group.start_soon(_sync_journal, journal)
                await _run_pool(producer, recorder, sending, settings, mode)
                group.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            if sending is not None:
                await sending.calls.aclose()
            recorder.journal_open = False
            journal.close()
            unreached = _Unreached(source, settings, journal, total, stop.reason)
            await anyio.to_thread.run_sync(
                _write, out_path, journal, total, unreached, columns, short
            )
            progress.close()
    counts = _counts(journal, total)
    planned: int | None = None
    planned_s: float | None = None
    if mode is Mode.PLAN:
        planned = planned_calls(counts, batch_size=job.batch_size if job.api == "batch" else None)
        window = settings.rate_period * (1 + settings.rate_margin)
        planned_s = budget_seconds(planned, settings.rate_calls, window)
    count = sending.calls.count if sending is not None else None
    summary = Summary(
        input_rows=total,
        counts=counts,
        requests=count.calls if count is not None else 0,
        rate_limited=count.rate_limited if count is not None else 0,
        elapsed_s=time.monotonic() - started,
        exit_code=_exit_code(counts, stop),
        result_path=str(out_path),
        resumed_rows=done,
        stopped_reason=stop.fatal.message
        if stop.fatal
        else ("interrupted" if stop.interrupted else None),
        planned_calls=planned,
        planned_s=planned_s,
        moved_aside=tuple(str(path) for path in journal.moved),
    )
    log.info("run_finished", **summary.to_json())
    return summary


async def _run_pool(
    producer: _Producer,
    recorder: _Recorder,
    sending: _Sending | None,
    settings: Settings,
    mode: Mode,
) -> None:
    if sending is None:  # nothing to send: every row is settled by the producer
        await run_pool(producer.produce, _never, recorder.consume, concurrency=1)
        return
    await fetch_license(sending.calls)
    sender = sending.sender
    concurrency = settings.concurrency if mode is Mode.RUN else 1
    process: Callable[[Any], Awaitable[_Outcome]]
    process = sender.process if sender.batch is None else sender.process_batch
    await run_pool(producer.produce, process, recorder.consume, concurrency=concurrency)


async def _never(request: UpdateRequest) -> _Outcome:
    raise AssertionError(f"row {request.row}: a run that sends nothing got a row to send")


@contextlib.contextmanager
def _one_error() -> Iterator[None]:
    """Raise a ``BatchphoneError`` from inside the pool's task groups as itself.

    The library's contract is one ``BatchphoneError`` (one line, its exit code), never an
    ``ExceptionGroup`` around it: a damaged file met while the pool runs must read the same as
    one met before it starts.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        errors = [exc for exc in leaves if isinstance(exc, BatchphoneError)]
        if errors and len(errors) == len(leaves):
            raise errors[0] from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves


class _Unreached:
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
        self.reason = (reason or Reason.INTERRUPTED).value

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if b"\0" not in self.codes:
            return
        codes, stamp = self.codes, now_iso()
        try:
            for row, line, login_id, phone_input in self._rows():
                if row <= len(codes) and not codes[row - 1]:
                    yield {
                        "row": row,
                        "line": line,
                        "loginId": login_id,
                        "phone_input": phone_input,
                        "status": Status.NOT_ATTEMPTED.value,
                        "reason": self.reason,
                        "attempts": 0,
                        "finished_at": stamp,
                    }
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


def _write(
    out_path: Path,
    journal: Journal,
    total: int,
    unreached: Iterable[dict[str, Any]],
    columns: tuple[str, ...],
    short: ShortSheet | None,
) -> int:
    records = (r for r in iter_records(journal.path) if r["row"] <= total)
    written: int = write_results(
        records, out_path, columns=columns, in_order=unreached, short=short
    )
    return written


def run_sync(
    job: Job,
    settings: Settings,
    *,
    progress: Progress | None = None,
    transport_factory: Callable[[], httpx.AsyncBaseTransport] | None = None,
    target: Endpoint | None = None,
    handle_signals: bool = False,
) -> Summary:
    """``execute`` on a fresh event loop (asyncio).

    ``handle_signals``: SIGINT/SIGTERM stop the run gracefully (the CLI asks for it); without it
    the caller's handlers stay as they are.
    """

    async def main() -> Summary:
        transport = transport_factory() if transport_factory else None
        return await execute(
            job,
            settings,
            progress=progress,
            transport=transport,
            target=target,
            handle_signals=handle_signals,
        )

    return anyio.run(main, backend="asyncio")
