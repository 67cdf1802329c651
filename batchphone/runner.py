"""The one place that knows every stage: reader -> rules -> pool(client) -> journal -> writer.

``execute`` runs one job (``run`` or ``validate``) and returns its ``Summary``; it raises
``BatchphoneError`` subclasses for everything that stops a run before its first call. Once the
pool has started, every way out (done, Ctrl-C, SIGTERM, a fatal API answer, the circuit breaker)
goes through the same ``finally``: the journal is closed and the result file written, so every
input row has its one result row.
"""

from __future__ import annotations

import collections
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import structlog
from anyio.abc import ObjectSendStream

from batchphone.config import Settings
from batchphone.errors import FatalRemoteError, UsageError
from batchphone.journal import Journal, RunLock, iter_records
from batchphone.models import (
    RESULT_COLUMNS,
    SUCCESS_STATUSES,
    Reason,
    RowResult,
    Status,
    Summary,
    UpdateRequest,
)
from batchphone.pool import run_pool
from batchphone.prepare import Mode, Prepared, Preparer, RowRules, now_iso
from batchphone.progress import NullProgress, Progress
from batchphone.reader import InputSource, InputSpec, open_input
from batchphone.writer import check_output_path, write_results

__all__ = ["EXIT_INTERRUPTED", "Job", "execute", "run_sync"]

EXIT_INTERRUPTED = 130
_BATCH_ROWS = 5_000
_CIRCUIT_WINDOW = 100
_CIRCUIT_MIN_CALLS = 20
#: After a block, keep this share of the calls per window: one block is bad luck, two a habit.
_SLOW_DOWN = 0.9

log = structlog.get_logger("batchphone")


@dataclass(frozen=True, slots=True)
class Job:
    """What to do: ``command`` over ``input_path``, results to ``out_path``."""

    command: str  # "run" or "validate"
    input_path: Path
    out_path: Path


@dataclass(slots=True)
class _Control:
    """Shared stop state: set by signals, fatal answers and the circuit breaker."""

    stop_reason: Reason | None = None
    fatal: FatalRemoteError | None = None
    interrupted: bool = False
    inflight: set[anyio.CancelScope] = field(default_factory=set)
    recent_failures: collections.deque[bool] = field(
        default_factory=lambda: collections.deque(maxlen=_CIRCUIT_WINDOW)
    )

    def stop(self, reason: Reason, *, hard: bool) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        if hard:
            for scope in list(self.inflight):
                scope.cancel()


def _identity(
    job: Job, settings: Settings, source: InputSource, target: dict[str, Any]
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
        "dry_run": settings.dry_run or job.command == "validate",
    }


def _result_from(request: UpdateRequest, **fields_: Any) -> RowResult:
    return RowResult(
        row=request.row,
        login_id=request.login_id,
        phone_input=request.phone_input,
        phone=request.phone,
        finished_at=now_iso(),
        **fields_,
    )


def _not_attempted(request: UpdateRequest, reason: Reason, **fields_: Any) -> RowResult:
    return _result_from(request, status=Status.NOT_ATTEMPTED, reason=reason, **fields_)


class _Run:
    """The state of one executing run: built by ``execute``, used by the pool's callbacks."""

    def __init__(
        self,
        job: Job,
        settings: Settings,
        source: InputSource,
        journal: Journal,
        progress: Progress,
        preparer: Preparer,
        total: int,
    ) -> None:
        self.job = job
        self.settings = settings
        self.source = source
        self.journal = journal
        self.progress = progress
        self.preparer = preparer
        self.total = total
        self.control = _Control()
        self.requests = 0
        self.rate_limited = 0
        self.client: Any = None
        self.limiter: Any = None
        self.policy: Any = None
        self._paused_until = 0.0

    # -- producer -------------------------------------------------------------------------
    def _batches(self) -> Iterator[list[Prepared]]:
        for rows in self.source.batches(batch_size=_BATCH_ROWS, limit=self.settings.limit):
            yield self._keep(self.preparer.prepare(rows))
        yield self._keep(self.preparer.finish())

    def _keep(self, items: list[Prepared]) -> list[Prepared]:
        state, retry = self.journal.state, self.settings.retry_failed
        return [item for item in items if not state.is_final(item.row, retry_failed=retry)]

    async def produce(
        self, jobs: ObjectSendStream[UpdateRequest], results: ObjectSendStream[RowResult]
    ) -> None:
        batches = self._batches()
        while True:
            # reading and normalizing a batch is blocking work: keep it off the event loop
            items = await anyio.to_thread.run_sync(next, batches, None)
            if items is None:
                return
            for index, item in enumerate(items):
                # rows that need no call are recorded right here: a trip through the result
                # stream costs more than the row itself (validate and dry-runs are all such rows)
                if isinstance(item, RowResult):
                    self.record(item)
                elif self.control.stop_reason is not None:
                    self.record(_not_attempted(item, self.control.stop_reason))
                else:
                    await jobs.send(item)
                if index % 1000 == 999:
                    await anyio.lowlevel.checkpoint()

    # -- workers --------------------------------------------------------------------------
    async def process(self, request: UpdateRequest) -> RowResult:
        from batchphone.retry import call_with_retry

        if self.control.stop_reason is not None:
            return _not_attempted(request, self.control.stop_reason)
        with anyio.CancelScope() as scope:
            self.control.inflight.add(scope)
            try:
                attempted = await call_with_retry(
                    lambda: self.client.update_phone(request),
                    limiter=self.limiter,
                    policy=self.policy,
                    on_rate_limited=self._on_rate_limited,
                )
            except FatalRemoteError as exc:
                if self.control.fatal is None:
                    self.control.fatal = exc
                self.control.stop(Reason.UNAUTHORIZED, hard=True)
                return _not_attempted(
                    request,
                    Reason.UNAUTHORIZED,
                    http_status=exc.http_status,
                    error_code=exc.error_code,
                    error_message=exc.message,
                )
            finally:
                self.control.inflight.discard(scope)
        if scope.cancelled_caught:
            return _not_attempted(request, self.control.stop_reason or Reason.INTERRUPTED)
        self.rate_limited += attempted.rate_limited
        if attempted.value is None:
            error = attempted.error
            result = _result_from(
                request,
                status=Status.FAILED,
                reason=Reason.RETRIES_EXHAUSTED,
                http_status=getattr(error, "http_status", None),
                error_code=getattr(error, "error_code", None),
                error_message=str(error) if error else None,
                attempts=attempted.attempts,
            )
        else:
            outcome = attempted.value
            user = outcome.user
            result = _result_from(
                request,
                status=outcome.status,
                reason=outcome.reason or (Reason.REMOVE_PHONE if request.phone == "" else None),
                http_status=outcome.http_status,
                error_code=outcome.error_code,
                error_message=outcome.error_message,
                attempts=attempted.attempts,
                user_id=user.get("userId") if user else None,
                verified_phone=user.get("verifiedPhone") if user else None,
                user_json=json.dumps(user, separators=(",", ":"), ensure_ascii=False)
                if user
                else None,
            )
        self._trip_circuit(result)
        return result

    def _on_rate_limited(self, retry_after: float) -> None:
        now = time.monotonic()
        if now >= self._paused_until:  # a new block, not one more answer from the same one
            calls = self.limiter.slow_down(_SLOW_DOWN)
            log.warning("rate_limited", retry_after=retry_after, calls_per_window=calls)
            self.progress.paused(retry_after)
        self._paused_until = max(self._paused_until, now + retry_after)

    def _trip_circuit(self, result: RowResult) -> None:
        failures = self.control.recent_failures
        failures.append(result.status is Status.FAILED)
        if len(failures) < _CIRCUIT_MIN_CALLS or self.control.fatal is not None:
            return
        rate = sum(failures) / len(failures)
        if rate > self.settings.max_error_rate:
            self.control.fatal = FatalRemoteError(
                f"stopped: {sum(failures)} of the last {len(failures)} calls failed "
                f"(last: {result.error_code or result.http_status or result.reason}: "
                f"{result.error_message}); fix the cause, then rerun to resume",
                http_status=result.http_status,
                error_code=result.error_code,
            )
            log.error("circuit_open", failed=sum(failures), calls=len(failures))
            self.control.stop(Reason.CIRCUIT_OPEN, hard=False)

    # -- consumer -------------------------------------------------------------------------
    async def consume(self, result: RowResult) -> None:
        self.record(result)

    def record(self, result: RowResult) -> None:
        """Journal a final result. Synchronous (no await), so the producer's and the consumer's
        records never interleave within a line."""
        self.journal.append(result, ts=time.time(), urgent=result.attempts > 0)
        if result.status is Status.FAILED:
            log.info(
                "row_failed",
                row=result.row,
                reason=result.reason,
                http_status=result.http_status,
                error_code=result.error_code,
            )
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


def _exit_code(counts: dict[str, int], control: _Control) -> int:
    if control.interrupted:
        return EXIT_INTERRUPTED
    if control.fatal is not None:
        return control.fatal.exit_code
    ok = {status.value for status in SUCCESS_STATUSES}
    return 0 if all(status in ok for status, n in counts.items() if n) else 1


async def _connect(
    run: _Run,
    settings: Settings,
    target: dict[str, Any],
    transport: httpx.AsyncBaseTransport | None,
) -> None:
    from batchphone.client import DescopeClient
    from batchphone.ratelimit import RateLimiter
    from batchphone.retry import RetryPolicy

    run.client = DescopeClient(
        project_id=target["project_id"],
        management_key=target["management_key"],
        base_url=target["base_url"],
        timeout=settings.timeout,
        max_connections=settings.concurrency,
        transport=transport,
    )
    run.limiter = RateLimiter(
        settings.rate_calls, settings.rate_period, margin=settings.rate_margin
    )
    run.limiter.seed(run.journal.state.call_times)
    run.policy = RetryPolicy(
        max_attempts=settings.max_attempts,
        wait_initial=settings.retry_wait_initial,
        wait_max=settings.retry_wait_max,
        wait_jitter=settings.retry_wait_initial,
    )


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
    mode = (
        Mode.VALIDATE
        if job.command == "validate"
        else (Mode.DRY_RUN if settings.dry_run else Mode.RUN)
    )
    needs_api = mode is Mode.RUN
    target = target if target is not None else _target(settings, needs_api)
    await anyio.to_thread.run_sync(check_output_path, job.out_path, job.input_path)
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
    source: InputSource,
    identity: dict[str, Any],
    target: dict[str, Any],
    mode: Mode,
    progress: Progress,
    transport: httpx.AsyncBaseTransport | None,
    handle_signals: bool,
    started: float,
) -> Summary:
    journal = Journal.open(
        job.out_path,
        identity,
        # validate has nothing to resume: reading an old report's journal would be wasted time
        restart=settings.restart or mode is Mode.VALIDATE,
        replaceable=mode is not Mode.RUN,
    )
    limit = settings.limit
    repeated, total = await anyio.to_thread.run_sync(
        lambda: (source.repeated_login_ids(limit), source.count_rows(limit))
    )
    rules = RowRules(
        mode=mode,
        default_region=settings.default_region,
        verified=settings.verified,
        allow_merge=settings.allow_merge,
        allow_remove=settings.allow_remove,
    )
    run = _Run(job, settings, source, journal, progress, Preparer(rules, repeated), total)
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
    )
    progress.start(
        total,
        done=done,
        calls_per_second=settings.rate_calls / settings.rate_period if mode is Mode.RUN else None,
    )
    try:
        if mode is Mode.RUN:
            await _connect(run, settings, target, transport)
        async with anyio.create_task_group() as group:
            if handle_signals and threading.current_thread() is threading.main_thread():
                group.start_soon(run.watch_signals)
            group.start_soon(run.sync_journal)
            await _run_pool(run, mode)
            group.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            if run.client is not None:
                run.requests = run.client.requests
                await run.client.aclose()
            journal.close()
            await anyio.to_thread.run_sync(_write, job.out_path, journal, total)
            progress.close()
    counts = _counts(journal, total)
    summary = Summary(
        input_rows=total,
        counts=counts,
        requests=run.requests,
        rate_limited=run.rate_limited,
        elapsed_s=time.monotonic() - started,
        exit_code=_exit_code(counts, run.control),
        result_path=str(job.out_path),
        resumed_rows=done,
        stopped_reason=run.control.fatal.message
        if run.control.fatal
        else ("interrupted" if run.control.interrupted else None),
    )
    log.info("run_finished", **summary.to_json())
    return summary


async def _run_pool(run: _Run, mode: Mode) -> None:
    if mode is Mode.RUN:
        # the handshake is a call in flight like any other: a second Ctrl-C must cancel it
        with anyio.CancelScope() as scope:
            run.control.inflight.add(scope)
            try:
                await run.client.fetch_license()
            except FatalRemoteError as exc:
                run.control.fatal = exc
                run.control.stop(Reason.UNAUTHORIZED, hard=True)
            finally:
                run.control.inflight.discard(scope)
    await run_pool(
        run.produce,
        run.process,
        run.consume,
        concurrency=run.settings.concurrency if mode is Mode.RUN else 1,
    )


def _write(out_path: Path, journal: Journal, total: int) -> int:
    records = (r for r in iter_records(journal.path) if r["row"] <= total)
    written: int = write_results(records, out_path, columns=RESULT_COLUMNS)
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
