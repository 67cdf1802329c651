"""Sending: the client, budget and retries of one run, and the rules every call obeys.

The pool's workers call ``Sender.process`` (one ``update/phone`` call per row) or
``Sender.process_batch`` (``--api batch``); the screen and the canary read through
``Sender.lookup``. All of them share one limiter, so reads and updates spend one budget, and
one ``Stop`` token, so that

* nothing new is sent once the run is stopping (Ctrl-C, a fatal answer, the circuit, a canary),
  and a wait for a slot or a 429 pause ends at the stop;
* a 401/403 stops the run at once and cancels the calls in flight (a second Ctrl-C too);
* a 429 pauses every caller of the limiter and lowers the budget for the rest of the run;
* the circuit breaker stops the run when too many of the last calls failed.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

import httpx

from batchphone.batch import BatchSender
from batchphone.budget import open_budget
from batchphone.client import DescopeClient
from batchphone.config import Settings
from batchphone.errors import FatalRemoteError
from batchphone.logs import get_logger
from batchphone.lookup import Lookup
from batchphone.models import Reason, RowResult, Status, UpdateRequest
from batchphone.prepare import result_for, user_fields
from batchphone.progress import Progress
from batchphone.ratelimit import RateLimiter
from batchphone.retry import RetryPolicy, call_with_retry
from batchphone.stop import Stop, Stopped

__all__ = ["Sender", "not_attempted"]

_CIRCUIT_WINDOW = 100
_CIRCUIT_MIN_CALLS = 20
#: After a block, keep this share of the calls per window: one block is bad luck, two a habit.
_SLOW_DOWN = 0.9

log = get_logger()


def not_attempted(request: UpdateRequest, reason: Reason, **fields_: Any) -> RowResult:
    """The result of a row the run stopped before sending."""
    return result_for(request, status=Status.NOT_ATTEMPTED, reason=reason, **fields_)


def _unauthorized(request: UpdateRequest, exc: FatalRemoteError) -> RowResult:
    return not_attempted(
        request,
        Reason.UNAUTHORIZED,
        http_status=exc.http_status,
        error_code=exc.error_code,
        error_message=exc.message,
    )


class Sender:
    """One run's connection to the API; ``batches`` adds a batch sender for ``--api batch``."""

    def __init__(
        self,
        settings: Settings,
        target: dict[str, Any],
        transport: httpx.AsyncBaseTransport | None,
        *,
        stop: Stop,
        progress: Progress,
        call_times: list[float],
        on_call: Callable[[float], None] | None = None,
        batches: bool = False,
    ) -> None:
        self.settings = settings
        self.stop = stop
        self.progress = progress
        self.on_call = on_call
        self._recent_failures: collections.deque[bool] = collections.deque(maxlen=_CIRCUIT_WINDOW)
        self.client = DescopeClient(
            project_id=target["project_id"],
            management_key=target["management_key"],
            base_url=target["base_url"],
            timeout=settings.timeout,
            max_connections=settings.concurrency,
            transport=transport,
        )
        # runs on one project share its budget; the embedded emulator is not that project
        store = "none" if settings.emulator else settings.budget_store
        self.limiter = RateLimiter(
            settings.rate_calls,
            settings.rate_period,
            margin=settings.rate_margin,
            shared=open_budget(store, target["project_id"], period=settings.rate_period),
        )
        # a restarted run must not spend again the window its predecessor spent just before
        self.limiter.seed(call_times)
        self.policy = RetryPolicy(
            max_attempts=settings.max_attempts,
            wait_initial=settings.retry_wait_initial,
            wait_max=settings.retry_wait_max,
            wait_jitter=settings.retry_wait_initial,
        )
        self.lookup = Lookup(
            self.client,
            self.limiter,
            self.policy,
            on_rate_limited=self.on_rate_limited,
            stop=stop,
            on_call=on_call,
        )
        self.batch: BatchSender | None = None
        if batches:
            self.batch = BatchSender(
                self.client,
                self.limiter,
                self.policy,
                send_one=self.process,
                stopped=lambda: stop.reason,
                observe=self.trip_circuit,
                on_rate_limited=self.on_rate_limited,
                stop=stop,
                on_call=on_call,
            )
        self._rate_limited = 0
        self._paused_until = 0.0

    @property
    def rate_limited(self) -> int:
        """429 answers met by updates, reads, batches and the license handshake.

        Counted as they arrive, so a 429 whose row the stop then left unsent counts too.
        """
        return self._rate_limited

    async def fetch_license(self) -> None:
        """The license handshake, through the limiter like every call (a 429 pauses the pool);
        a 401/403 here stops the run before any row is sent."""
        try:
            await call_with_retry(
                self.client.fetch_license,
                limiter=self.limiter,
                policy=self.policy,
                on_rate_limited=self.on_rate_limited,
                stop=self.stop,
                on_call=self.on_call,
            )
        except FatalRemoteError as exc:
            self.fatal(exc)
        except Stopped:
            return

    async def aclose(self) -> None:
        """Close the connection pool and leave the shared budget."""
        self.limiter.close()
        await self.client.aclose()

    # -- workers --------------------------------------------------------------------------
    async def process(self, request: UpdateRequest) -> RowResult:
        """Send one row (``update/phone``, retried) and return its result."""
        try:
            result = await self._send_one(request)
        except FatalRemoteError as exc:
            self.fatal(exc)
            return _unauthorized(request, exc)
        except Stopped as stopped:
            return not_attempted(request, stopped.reason)
        self.trip_circuit(result)
        return result

    async def process_batch(self, requests: list[UpdateRequest]) -> list[RowResult]:
        """``--api batch``: one patch call for the batch (see ``batch.BatchSender``)."""
        assert self.batch is not None
        try:
            return await self.batch.send(requests)
        except FatalRemoteError as exc:
            self.fatal(exc)
            return [_unauthorized(r, exc) for r in requests]
        except Stopped as stopped:
            return [not_attempted(r, stopped.reason) for r in requests]

    def fatal(self, exc: FatalRemoteError) -> None:
        """No later call can succeed: stop the run and cancel the calls in flight."""
        self.stop.request(Reason.UNAUTHORIZED, hard=True, fatal=exc)

    async def _send_one(self, request: UpdateRequest) -> RowResult:
        """One ``update/phone`` call with retries, as a result (``FatalRemoteError`` raises)."""
        attempted = await call_with_retry(
            lambda: self.client.update_phone(request),
            limiter=self.limiter,
            policy=self.policy,
            on_rate_limited=self.on_rate_limited,
            stop=self.stop,
            on_call=self.on_call,
        )
        if attempted.value is None:
            error = attempted.error
            return result_for(
                request,
                status=Status.FAILED,
                reason=Reason.RETRIES_EXHAUSTED,
                http_status=getattr(error, "http_status", None),
                error_code=getattr(error, "error_code", None),
                error_message=str(error) if error else None,
                attempts=attempted.attempts,
            )
        outcome = attempted.value
        return result_for(
            request,
            status=outcome.status,
            reason=outcome.reason or request.change_reason,
            http_status=outcome.http_status,
            error_code=outcome.error_code,
            error_message=outcome.error_message,
            attempts=attempted.attempts,
            **user_fields(outcome.user),
        )

    def on_rate_limited(self, retry_after: float) -> None:
        """A 429 arrived (the limiter is paused already): slow down once per block."""
        self._rate_limited += 1
        now = time.monotonic()
        if now >= self._paused_until:  # a new block, not one more answer from the same one
            calls = self.limiter.slow_down(_SLOW_DOWN)
            log.warning("rate_limited", retry_after=retry_after, calls_per_window=calls)
            self.progress.paused(retry_after)
        self._paused_until = max(self._paused_until, now + retry_after)

    def trip_circuit(self, result: RowResult) -> None:
        """Count ``result`` in the circuit breaker; stop the run when too many calls fail."""
        failures = self._recent_failures
        failures.append(result.status is Status.FAILED)
        if len(failures) < _CIRCUIT_MIN_CALLS or self.stop.fatal is not None:
            return
        rate = sum(failures) / len(failures)
        if rate > self.settings.max_error_rate:
            # no API text here: it may echo a login id or a phone, and this message is logged
            last = result.error_code or result.http_status or result.reason
            self.stop.request(
                Reason.CIRCUIT_OPEN,
                fatal=FatalRemoteError(
                    f"stopped: {sum(failures)} of the last {len(failures)} calls failed "
                    f"(last: {last}, row {result.row}); fix the cause, then rerun to resume",
                    http_status=result.http_status,
                    error_code=result.error_code,
                ),
            )
            log.error("circuit_open", failed=sum(failures), calls=len(failures))
