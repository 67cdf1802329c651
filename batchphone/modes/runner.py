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

import asyncio
import contextlib
import itertools
import os
import signal
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
from anyio.abc import ObjectSendStream

from batchphone.config import Endpoint, Settings, check_plain_http
from batchphone.errors import (
    BatchphoneError,
    LocalFaultError,
    OutputError,
    RemoteError,
    UsageError,
)
from batchphone.files.journal import Journal, RunIdentity, iter_records, journal_identity
from batchphone.files.lock import RunLock
from batchphone.files.reader import InputSource, InputSpec, open_input
from batchphone.files.writer import (
    ShortSheet,
    check_output_path,
    check_sheet_rows,
    short_sheet,
    write_results,
)
from batchphone.logs import get_logger
from batchphone.models import (
    RESULT_COLUMNS,
    SUCCESS_STATUSES,
    Command,
    PhoneState,
    Reason,
    RowResult,
    Status,
    Summary,
    UpdateRequest,
    next_step,
)
from batchphone.modes.job import BATCH_ROWS, Job, job_mode, prepared_batches, screen_rules
from batchphone.modes.report import local_report, write_report
from batchphone.modes.reverse import UndoSource, open_results
from batchphone.progress import NullProgress, Progress
from batchphone.remote.batch import BatchSender
from batchphone.remote.calls import Calls, open_calls
from batchphone.remote.canary import Canary
from batchphone.remote.lookup import Lookup
from batchphone.remote.pool import run_pool
from batchphone.remote.screen import Screen, ScreenRules, budget_seconds, planned_calls
from batchphone.remote.send import RowSender, fetch_license
from batchphone.remote.settle import read_back
from batchphone.remote.stop import STOP_SIGNALS, Stop, Stopped
from batchphone.rows.prepare import EXPLANATIONS, Mode, Prepared, now_iso

__all__ = ["EXIT_INTERRUPTED", "Job", "execute", "run_sync"]

EXIT_INTERRUPTED = 130
#: Statuses that leave a row to the next run (resumed, not counted as done on the bar).
_OPEN = frozenset({Status.NOT_ATTEMPTED, Status.UNSETTLED})

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
        sheet=_sheet(job, settings, source),
        emulated=target.emulated if target is not None else None,
    )


def _sheet(job: Job, settings: Settings, source: InputSource | UndoSource) -> str | None:
    """The sheet in the run's identity: its name as the workbook spells it, so that every way
    ``--sheet`` can name it (any case, its number) resumes the same run. A journal that names
    the same sheet another way (written before names were spelled so) keeps its spelling."""
    if not isinstance(source, InputSource):
        return settings.sheet
    name = source.sheet_name(settings.sheet)
    if name is None:
        return settings.sheet
    old = journal_identity(job.out_path).get("sheet") if job.out_path is not None else None
    if isinstance(old, str) and old != name and source.sheet_name(old) == name:
        return old
    return name


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


class _Pending:
    """Rows handed to the workers whose results have not come back yet, and those that came
    back ``unsettled`` (their requests, for the settle rounds)."""

    def __init__(self) -> None:
        self.sent: dict[int, UpdateRequest] = {}
        self.unsettled: list[UpdateRequest] = []
        self._changed: anyio.Event | None = None

    def add(self, requests: Iterable[UpdateRequest]) -> None:
        for request in requests:
            self.sent[request.row] = request

    def done(self, result: RowResult) -> None:
        request = self.sent.pop(result.row, None)
        if request is not None and result.status is Status.UNSETTLED:
            self.unsettled.append(request)
        if not self.sent and self._changed is not None:
            self._changed.set()

    async def drained(self) -> None:
        """Return once every row handed to the workers has its result."""
        while self.sent:
            self._changed = anyio.Event()
            await self._changed.wait()

    def take_unsettled(self) -> list[UpdateRequest]:
        taken, self.unsettled = self.unsettled, []
        return taken


class _Recorder:
    """The consumer, and the only writer of row results: journal, canary, progress bar.

    It also writes ahead: the intents of each call that may change users (``intend``) and the
    start and end of every call (``started``, ``answered``: a ``calls.CallLog``), from the task
    that makes the call, before it leaves.
    """

    def __init__(
        self, journal: Journal, progress: Progress, canary: Canary | None, *, hold: float
    ) -> None:
        self.journal = journal
        self.progress = progress
        self.canary = canary
        self.journal_open = True
        self.pending = _Pending()
        #: how long after its start an unanswered call may still be counted by the server
        self.hold = hold
        #: rows made final by an API call in this process (the summary's ``sent_now``)
        self.sent = 0

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
        self.pending.done(result)
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
        # a row left unsent by a stop does not move the bar: it stays where the run stopped;
        # nor does an unsettled one: it moves when a read settles it
        if advance and result.status not in _OPEN:
            self.sent += 1 if result.attempts else 0
            self.progress.advance(result)

    def intend(self, requests: Iterable[UpdateRequest]) -> None:
        """Journal, before the call leaves, each row's before-image and what the call sets."""
        if not self.journal_open:
            raise AssertionError("a call that may change users after the journal was closed")
        self.journal.append_intent(list(requests), ts=time.time())
        if self.journal.failed is not None:
            # the record is not on disk (a full disk stopped the run): the call must not leave
            raise Stopped(Reason.STOPPED)

    def started(self, ts: float) -> object:
        """Journal that a call starts (``calls.CallLog``): a restart's limiter counts it."""
        if not self.journal_open:
            return None
        return self.journal.append_start(ts, until=ts + self.hold)

    def answered(self, ts: float, token: object) -> None:
        """Journal the time a call was answered (or given up): the limiter's seed."""
        if self.journal_open:
            self.journal.append_call(ts, token if isinstance(token, str) else None)


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
        unread = [r for r in bad if r.row in canary.unread]
        missed = [r for r in bad if r.row not in canary.unread]
        # a read that failed proves nothing either way: said apart from an update that missed
        groups = ((missed, "did not stick"), (unread, "could not be read back"))
        verdicts = [
            f"{len(group)} of {len(canary.sent)} updates {what} (rows {_rows(group)}"
            for group, what in groups
            if group
        ]
        self.stop.request(
            Reason.STOPPED,
            fatal=BatchphoneError(
                f"canary: {'), '.join(verdicts)}: see their error_message in the result file); "
                "the remaining rows were not sent: find the cause, then rerun the same command "
                "to resume"
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
    #: rounds of reading back the rows whose answer was lost (the last one sends nothing)
    SETTLE_ROUNDS = 2

    def __init__(
        self,
        prepared: Iterator[list[Prepared]],
        journal: Journal,
        settings: Settings,
        stop: Stop,
        *,
        pending: _Pending | None = None,
        screen: Screen | None = None,
        batcher: _Batcher | None = None,
        canary: _CanaryCheck | None = None,
        lookup: Lookup | None = None,
    ) -> None:
        self.prepared = prepared
        self.journal = journal
        self.settings = settings
        self.stop = stop
        self.pending = pending if pending is not None else _Pending()
        self.screen = screen
        self.batcher = batcher
        self.canary = canary
        self.lookup = lookup
        self._settled: list[RowResult] = []

    def _batches(self) -> Iterator[list[Prepared]]:
        state, retry = self.journal.state, self.settings.retry_failed
        for items in self.prepared:
            yield [
                _with_prior(item, state.befores)
                for item in items
                if not state.is_final(item.row, retry_failed=retry)
            ]

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
        await self._settle(jobs, results)

    async def _settle(
        self, jobs: ObjectSendStream[Any], results: ObjectSendStream[_Outcome]
    ) -> None:
        """Read back the rows whose answer was lost, once every sent row has its result;
        send again those not applied, then read those back in turn."""
        if self.lookup is None:
            return
        for round_ in range(1, self.SETTLE_ROUNDS + 1):
            await self.pending.drained()
            requests = self.pending.take_unsettled()
            if not requests or self.stop.reason is not None:
                return  # stopping: they keep their unsettled records, a rerun reads them
            log.info("settle_round", round=round_, rows=len(requests))
            settled = await read_back(self.lookup, requests, last=round_ == self.SETTLE_ROUNDS)
            if settled.results:
                await results.send(_Settled(settled.results))
            for request in settled.resend:
                if self.stop.reason is not None:
                    break
                await self._send(request, jobs)
            await self._flush(jobs)

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
        await self._send(item, jobs)
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

    async def _send(self, request: UpdateRequest, jobs: ObjectSendStream[Any]) -> None:
        if self.batcher is None:
            self.pending.add([request])
            await jobs.send(request)
        else:
            batch = self.batcher.add(request)
            if batch is not None:
                self.pending.add(batch)
                await jobs.send(batch)

    async def _flush(self, jobs: ObjectSendStream[Any]) -> None:
        batch = self.batcher.flush() if self.batcher is not None else None
        if batch is not None:
            self.pending.add(batch)
            await jobs.send(batch)


def _with_prior(item: Prepared, befores: dict[int, PhoneState]) -> Prepared:
    """A resumed row that an earlier call may have changed carries its journaled image."""
    if isinstance(item, UpdateRequest) and item.row in befores:
        return replace(item, prior=befores[item.row])
    return item


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
                # the second Ctrl-C is advice only when there is something for it to cancel
                log.warning(
                    f"stopping: {in_flight} calls in flight; Ctrl-C again to cancel them"
                    if in_flight
                    else "stopping: no call in flight",
                    signal=name,
                    calls_in_flight=in_flight,
                )


async def _sync_journal(journal: Journal) -> None:
    """Flush and fsync the journal every second while the run goes on."""
    while True:
        await anyio.sleep(1.0)
        journal.flush()  # here, on the loop: the buffer is not thread-safe
        try:
            await anyio.to_thread.run_sync(journal.fsync)
        except OSError as exc:  # a full disk: the run stops, the result file is still written
            journal.fail(exc)


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
    #: reads back the rows whose answer was lost (``None`` when nothing is sent)
    settle: Lookup | None


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
        call_log=recorder,
    )
    lookup = Lookup(calls)
    batches = mode is Mode.RUN and job.api == "batch"
    canary = recorder.canary
    intend = recorder.intend
    return _Sending(
        calls=calls,
        sender=RowSender(
            calls, BatchSender(calls, intend=intend) if batches else None, intend=intend
        ),
        screen=Screen(rules, lookup, stop=stop) if rules.active else None,
        canary=_CanaryCheck(canary, lookup, stop) if canary is not None else None,
        settle=lookup if mode is Mode.RUN else None,
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
            "no project id: set DESCOPE_PROJECT_ID, project_id in config.toml, or project_id=...",
            setting="project_id",
        )
    if settings.management_key is None:
        raise UsageError(
            "no management key: set DESCOPE_MANAGEMENT_KEY or use management_key_file=PATH",
            setting="management_key",
        )
    from batchphone.remote.client import derive_base_url

    base_url = settings.base_url or derive_base_url(settings.project_id)
    check_plain_http(base_url, allowed=settings.allow_insecure_http)
    return Endpoint(
        project_id=settings.project_id,
        base_url=base_url,
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
    if job.out_path is not None and job.out_path.suffix.lower() == ".xlsx":
        # known before the first call, not after the last one (the count is kept for later)
        rows = await anyio.to_thread.run_sync(source.count_rows, settings.limit)
        check_sheet_rows(job.out_path, rows)
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
        stop = Stop()
        return await _watching_signals(
            stop,
            handle_signals,
            lambda: _execute_locked(
                job, settings, source, identity, target, mode, progress, transport, started, stop
            ),
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
    started: float,
    stop: Stop,
) -> Summary:
    out_path = job.out_path
    assert out_path is not None  # only a validate goes without one (a local report)
    journal = Journal.open(
        out_path,
        identity,
        restart=settings.restart,
        replaceable=mode is not Mode.RUN,
        resume=mode is not Mode.VALIDATE,  # validate has nothing to resume
        rate=f"{settings.rate_calls}/{settings.rate_period:g}",
    )
    journal.on_failure = _journal_failed(journal, stop)
    prepared, total = await anyio.to_thread.run_sync(prepared_batches, source, settings, mode)
    _refuse_shrinking(journal, settings, total, out_path)
    rules = screen_rules(job, settings, mode)
    faults = _Faults(stop, sends=mode is Mode.RUN)
    canary = Canary(job.canary) if mode is Mode.RUN and job.canary else None
    recorder = _Recorder(journal, progress, canary, hold=settings.timeout)
    open_ = {status.value for status in _OPEN}
    if settings.retry_failed:  # they are sent again: not done yet (as Journal.is_final says)
        open_.add(Status.FAILED.value)
    done = total - sum(n for status, n in _counts(journal, total).items() if status in open_)
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
            pending=recorder.pending,
            lookup=sending.settle if sending is not None else None,
            screen=sending.screen if sending is not None else None,
            batcher=_Batcher(job.batch_size)
            if sending is not None and sending.sender.batch is not None
            else None,
            canary=sending.canary if sending is not None else None,
        )
        with _one_error():
            async with anyio.create_task_group() as group:
                group.start_soon(_sync_journal, journal)
                await _run_pool(producer, recorder, sending, settings, mode, faults)
                group.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            if sending is not None:
                await sending.calls.aclose()
            recorder.journal_open = False
            journal.close()  # a failed journal (on_failure set) does not raise
            unreached = _Unreached(source, settings, journal, total, stop.reason)
            written = await anyio.to_thread.run_sync(
                _write_somewhere, out_path, journal, total, unreached, columns, faults.sent, short
            )
            progress.close()
    result_path = faults.settle(written, out_path)
    counts = _counts(journal, total)
    planned: int | None = None
    planned_s: float | None = None
    if mode is Mode.PLAN:
        planned = planned_calls(counts, batch_size=job.batch_size if job.api == "batch" else None)
        window = settings.rate_period * (1 + settings.rate_margin)
        planned_s = budget_seconds(planned, settings.rate_calls, window)
    count = sending.calls.count if sending is not None else None
    exit_code = _exit_code(counts, stop)
    summary = Summary(
        input_rows=total,
        counts=counts,
        requests=count.calls if count is not None else 0,
        rate_limited=count.rate_limited if count is not None else 0,
        elapsed_s=time.monotonic() - started,
        exit_code=exit_code,
        result_path=result_path,
        resumed_rows=done,
        stopped_reason=faults.note(
            stop.fatal.message if stop.fatal else ("interrupted" if stop.interrupted else None)
        ),
        planned_calls=planned,
        planned_s=planned_s,
        moved_aside=tuple(str(path) for path in journal.moved),
        sent_now=recorder.sent,
        # written with the result file at --out (a copy in the temp folder has none)
        short_path=str(short.path) if short and written.path == out_path else None,
        next_step=next_step(
            exit_code,
            resumable=mode is not Mode.VALIDATE,  # as Journal.open resumes
            http_status=getattr(stop.fatal, "http_status", None),
            stopped=stop.reason,
            unsettled=counts.get(Status.UNSETTLED.value, 0),
            # only a run or an undo takes --retry-failed (a plan is simply made again)
            failed=counts.get(Status.FAILED.value, 0) if mode is Mode.RUN else 0,
            undo=job.command is Command.UNDO,
        ),
    )
    log.info("run_finished", **summary.to_json())
    return summary


async def _run_pool(
    producer: _Producer,
    recorder: _Recorder,
    sending: _Sending | None,
    settings: Settings,
    mode: Mode,
    faults: _Faults,
) -> None:
    produce = faults.producing(producer.produce)
    if sending is None:  # nothing to send: every row is settled by the producer
        await run_pool(produce, _never, recorder.consume, concurrency=1)
        return
    await fetch_license(sending.calls)
    sender = sending.sender
    concurrency = settings.concurrency if mode is Mode.RUN else 1
    process: Callable[[Any], Awaitable[_Outcome]]
    process = sender.process if sender.batch is None else sender.process_batch
    await run_pool(produce, faults.sending(process), recorder.consume, concurrency=concurrency)


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
        self.message = EXPLANATIONS.get(reason or Reason.INTERRUPTED)

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
                        "error_message": self.message,
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
    # a journal that failed (a full disk) holds the rest of its records in memory
    journaled = itertools.chain(iter_records(journal.path), journal.unwritten_records())
    records = (r for r in journaled if r["row"] <= total)
    written: int = write_results(
        records, out_path, columns=columns, in_order=unreached, short=short
    )
    return written


# -- local faults: a full disk, the budget store, the input changed (issue 16, point 4) --------


class _Faults:
    """Local errors while the pool runs, and how the run then ends.

    A full disk under the journal, a shared budget store that fails, an input changed under the
    run: each stops the run as a first Ctrl-C does (``Stop.fail``): no new call starts, the
    calls in flight finish and are journaled, and the result file is written (a copy elsewhere
    when ``--out`` cannot be: ``_write_somewhere``). Before any update left, the error ends the
    run as itself (exit 2: nothing was sent); after, as ``LocalFaultError`` (exit 4).
    """

    def __init__(self, stop: Stop, *, sends: bool) -> None:
        self.stop = stop
        self.sends = sends  # the workers send updates (not a plan's or a dry run's rows)
        #: an update may have left: a worker took a row while the run was not stopping
        self.sent = False
        self.where: str | None = None  # where the result file is, when not at --out

    def producing(
        self, produce: Callable[[Any, Any], Awaitable[None]]
    ) -> Callable[[Any, Any], Awaitable[None]]:
        """``produce``, with a local error (the input changed) turned into a stop."""

        async def guarded(jobs: Any, results: Any) -> None:
            try:
                await produce(jobs, results)
            except BatchphoneError as exc:
                if isinstance(exc, RemoteError):
                    raise
                self.stop.fail(exc)  # the workers finish what they hold, the consumer drains

        return guarded

    def sending(
        self, process: Callable[[Any], Awaitable[_Outcome]]
    ) -> Callable[[Any], Awaitable[_Outcome]]:
        """``process``, noting that an update may leave (no call starts once stopping)."""

        async def guarded(item: Any) -> _Outcome:
            if self.sends and self.stop.reason is None:
                self.sent = True
            return await process(item)

        return guarded

    def settle(self, written: _Written, out_path: Path) -> str | None:
        """After the result file was written (or not): the run's end; its result path."""
        if written.error is not None:
            self.stop.fail(written.error)
            if written.path is not None:
                self.where = (
                    f"a copy of the result file is at {written.path} ({written.error.message})"
                )
            else:
                self.where = f"no result file could be written ({written.error.message})"
            log.error(
                "result_file_not_written",
                result_path=str(out_path),
                copy=str(written.path) if written.path else None,
            )
        local = self.stop.local
        if local is not None and self.stop.fatal is local:
            if not self.sent:
                raise local  # before the first update: exit 2, nothing was sent
            where = self.where or f"every row is in {out_path}"
            self.stop.fatal = LocalFaultError(
                f"{local.message}; the run stopped after updates were sent (the calls in "
                f"flight finished): {where}",
                cause=local,
            )
        return str(written.path) if written.path is not None else None

    def note(self, reason: str | None) -> str | None:
        """The stop reason, with where the result file went when it is not at ``--out``."""
        if self.where is None or (reason is not None and self.where in reason):
            return reason
        return f"{reason}; {self.where}" if reason else self.where


@dataclass(frozen=True, slots=True)
class _Written:
    """Where the result file was written (``None``: nowhere), and why not at ``--out``."""

    path: Path | None
    error: OutputError | None = None


def _write_somewhere(
    out_path: Path,
    journal: Journal,
    total: int,
    unreached: Iterable[dict[str, Any]],
    columns: tuple[str, ...],
    sent: bool,
    short: ShortSheet | None = None,
) -> _Written:
    """The result file at ``out_path``; when that fails after updates were sent, a copy in
    the system's temp folder (0600, as every result file): the rows must be somewhere."""
    try:
        _write(out_path, journal, total, unreached, columns, short)
        return _Written(out_path)
    except OutputError as exc:
        if not sent:
            return _Written(None, exc)
        error = exc
    copy = _copy_path(out_path)
    try:
        _write(copy, journal, total, unreached, columns, None)
    except OutputError:
        return _Written(None, error)
    return _Written(copy, error)


def _copy_path(out_path: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path(tempfile.gettempdir()) / f"batchphone-{stamp}-{os.getpid()}-{out_path.name}"


def _journal_failed(journal: Journal, stop: Stop) -> Callable[[OSError], None]:
    """What a journal write that fails (a full disk) does: stop the run, as ``Stop.fail``."""

    def failed(exc: OSError) -> None:
        log.error("journal_write_failed", path=str(journal.path), errno=exc.errno)
        reason = exc.strerror or type(exc).__name__
        stop.fail(OutputError(f"cannot write the journal {journal.path} ({reason})"))

    return failed


def _refuse_shrinking(journal: Journal, settings: Settings, total: int, out_path: Path) -> None:
    """``--limit`` on a resumed run may grow, never shrink, the result file (the journal's
    rows past it would be dropped from it): refused before any call."""
    if settings.limit is None or not journal.resumed:
        return
    held = len(journal.state.statuses.rstrip(b"\0")) - 1  # the highest row journaled
    if held > total:
        journal.close()
        raise UsageError(
            f"limit={settings.limit}: the journal of {out_path} holds rows up to {held}, "
            f"which its result file keeps: give limit={held} or more, or no limit=...",
            setting="limit",
        )


async def _watching_signals(
    stop: Stop, handle_signals: bool, body: Callable[[], Awaitable[Summary]]
) -> Summary:
    """``body`` with SIGINT/SIGTERM stopping it (``_watch_signals``) from its start to its end,
    the final write of the result file included; its exception is raised as itself."""
    if not (handle_signals and threading.current_thread() is threading.main_thread()):
        return await body()
    failure: BaseException | None = None
    summary: Summary | None = None
    async with anyio.create_task_group() as group:
        group.start_soon(_watch_signals, stop)
        try:
            summary = await body()
        except BaseException as exc:  # raised below, outside the group: not in an ExceptionGroup
            failure = exc
        group.cancel_scope.cancel()
    if failure is not None:
        raise failure
    assert summary is not None
    return summary


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
    job: Job,
    settings: Settings,
    *,
    progress: Progress | None = None,
    transport_factory: Callable[[], httpx.AsyncBaseTransport] | None = None,
    target: Endpoint | None = None,
    handle_signals: bool = False,
) -> Summary:
    """``execute`` on a fresh event loop (asyncio).

    ``handle_signals``: SIGINT/SIGTERM stop the run gracefully (the CLI asks for it), and the
    caller's handlers are put back afterwards; without it they stay as they are.
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
