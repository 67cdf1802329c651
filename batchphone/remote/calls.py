"""The one stack every API call of a run goes through: stop -> circuit -> retry -> limiter -> HTTP.

Updates, reads (``lookup``), batch patches (``batch``), canary read-backs and the license
handshake are all ``await calls(endpoint, ...)``. Each layer has one job:

* **stop**: no call starts once the run is stopping (``Stop.check``), and a 401/403 stops the run
  at once, cancelling the calls in flight (no later call can succeed); so does a first call
  that finds nothing listening (``UnreachableError``), without cancelling;
* **circuit** (``Circuit``): counts the calls that failed for good and stops the run when too
  many of the last ones did;
* **retry** (``retry.retried``): transient errors are tried again after a backoff;
* **limiter** (``limited``): a slot from before the call until its answer; a 429 pauses every
  caller of the limiter and the same call is sent again without costing an attempt;
* **HTTP**: the client's endpoint, counted in ``CallCount`` (the one counter the runner reads).

No layer calls back up: the stack raises (``Stopped``, ``FatalRemoteError``, ``RemoteError``)
or returns an ``Attempted``, and the caller decides what its rows become.
"""

from __future__ import annotations

import collections
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import httpx

from batchphone.config import Endpoint, Settings
from batchphone.errors import (
    BatchphoneError,
    FatalRemoteError,
    RateLimitedError,
    RemoteError,
    UnreachableError,
)
from batchphone.logs import get_logger
from batchphone.models import Reason
from batchphone.progress import NullProgress, Progress
from batchphone.remote.budget import open_budget
from batchphone.remote.client import DescopeClient
from batchphone.remote.ratelimit import Clock, RateLimiter
from batchphone.remote.retry import Attempted, RetryPolicy, retried
from batchphone.remote.stop import Stop, Stopped

__all__ = [
    "CallCount",
    "CallLog",
    "Calls",
    "Circuit",
    "SlowDown",
    "Verdicts",
    "call_with_retry",
    "fatal_reason",
    "limited",
    "open_calls",
]

T = TypeVar("T")

#: What the circuit learns from one finished call: one entry per outcome it stands for (a
#: batch patch stands for each row it settled), ``None`` for a success, or a short label of
#: the failure (an error code, an HTTP status, a reason code: never API text).
Verdicts = Callable[[Attempted[T]], Iterable[str | None]]

#: After a block, keep this share of the calls per window: one block is bad luck, two a habit.
_SLOW_DOWN = 0.9


class CallLog(Protocol):
    """Where a run records each call: its start before it is sent, its end after.

    A restarted run seeds its limiter from these (a call never answered holds its slot until
    the latest its answer could have come), so they are written before and after the wire.
    """

    def started(self, ts: float) -> object:
        """A call starts at ``ts`` (epoch seconds); the token ``answered`` gets back."""

    def answered(self, ts: float, token: object) -> None:
        """The call ``token`` names was answered (or given up) at ``ts``."""


log = get_logger()


def fatal_reason(error: FatalRemoteError) -> Reason:
    """The reason of a row left unsent by a fatal error: nothing listens, or the key is refused."""
    return Reason.UNREACHABLE if isinstance(error, UnreachableError) else Reason.UNAUTHORIZED


def failure_label(error: RemoteError | None, fallback: Reason = Reason.RETRIES_EXHAUSTED) -> str:
    """A label for the circuit's message: the error code, else the HTTP status, else a reason."""
    if error is not None and (error.error_code or error.http_status):
        return str(error.error_code or error.http_status)
    return fallback.value


def one_call(attempted: Attempted[Any]) -> list[str | None]:
    """The default verdict: the call succeeded, or failed after its retries."""
    return [None] if attempted.error is None else [failure_label(attempted.error)]


def failures_only(attempted: Attempted[Any]) -> list[str | None]:
    """Reads: a read that failed counts, one that worked does not dilute the updates' record."""
    return [] if attempted.error is None else [failure_label(attempted.error)]


@dataclass(slots=True)
class CallCount:
    """HTTP calls sent (answered or not) and the 429s among them: what ``Summary`` reports."""

    calls: int = 0
    rate_limited: int = 0


class Circuit:
    """The circuit breaker: stops the run when more than ``max_error_rate`` of the last
    ``window`` outcomes failed (once at least ``min_calls`` are known)."""

    def __init__(
        self, stop: Stop, max_error_rate: float, *, window: int = 100, min_calls: int = 20
    ) -> None:
        self.stop = stop
        self.max_error_rate = max_error_rate
        self.min_calls = min_calls
        self._recent: collections.deque[bool] = collections.deque(maxlen=window)
        self._last: str | None = None

    def record(self, failure: str | None) -> None:
        """Count one outcome (``None``: success; else its label); trip when too many failed."""
        recent = self._recent
        recent.append(failure is not None)
        if failure is not None:
            self._last = failure
        if len(recent) < self.min_calls or self.stop.fatal is not None:
            return
        failed = sum(recent)
        if failed / len(recent) > self.max_error_rate:
            # no API text here: it may echo a login id or a phone, and this message is logged
            self.stop.request(
                Reason.CIRCUIT_OPEN,
                fatal=FatalRemoteError(
                    f"{failed} of the last {len(recent)} calls failed (last: {self._last})"
                ),
            )
            log.error("circuit_open", failed=failed, calls=len(recent))


class SlowDown:
    """A 429 arrived (the limiter is paused already): lower the budget once per block."""

    def __init__(self, limiter: RateLimiter, progress: Progress | None = None) -> None:
        self.limiter = limiter
        self.progress = progress or NullProgress()
        self._paused_until = float("-inf")

    def __call__(self, retry_after: float) -> None:
        now = self.limiter.clock.now()  # the clock of the limiter's pause
        if now >= self._paused_until:  # a new block, not one more answer from the same one
            calls = self.limiter.log.slow_down(_SLOW_DOWN)
            log.warning("rate_limited", retry_after=retry_after, calls_per_window=calls)
            self.progress.paused(retry_after, calls_per_second=calls / self.limiter.period)
        self._paused_until = max(self._paused_until, now + retry_after)


async def limited(
    call: Callable[[], Awaitable[T]],
    *,
    limiter: RateLimiter,
    stop: Stop,
    default_retry_after: float,
    on_rate_limited: Callable[[float], None] | None = None,
    call_log: CallLog | None = None,
) -> T:
    """The limiter layer: send ``call`` holding a slot; after a 429 pause and send it again.

    - The slot is held from before the call until its answer arrives (or it is given up: an
      error, a timeout, cancellation) and frees one window later.
    - ``RateLimitedError``: pause the limiter (every caller waits) for its ``retry_after`` (or
      ``default_retry_after`` when it is not positive), tell ``on_rate_limited``, send again.
    - ``stop``: the wait for a slot or a pause ends at its first request (``Stopped``); a hard
      stop cancels the call on the wire (``Stopped`` too).
    - ``call_log`` records the wall time (epoch seconds) each call starts, before it is sent,
      and when it was answered or given up.
    """
    while True:
        try:
            with stop.waiting():
                slot = await limiter.acquire()
        except BatchphoneError as exc:  # the shared budget store failed: a local error
            stop.fail(exc)
            raise Stopped(Reason.STOPPED) from None
        token: object = None
        try:
            try:
                if call_log is not None:
                    token = call_log.started(time.time())
                with stop.calling():
                    return await call()
            finally:
                # the slot is held until the answer (or the give-up) and frees one window later
                limiter.release(slot)
                if call_log is not None:
                    call_log.answered(time.time(), token)
        except RateLimitedError as exc:
            retry_after = exc.retry_after if exc.retry_after > 0 else default_retry_after
            limiter.pause(retry_after)
            if on_rate_limited is not None:
                on_rate_limited(retry_after)


async def call_with_retry(
    call: Callable[[], Awaitable[T]],
    *,
    limiter: RateLimiter,
    policy: RetryPolicy,
    clock: Clock | None = None,
    on_rate_limited: Callable[[float], None] | None = None,
    rng: random.Random | None = None,
    stop: Stop | None = None,
    call_log: CallLog | None = None,
) -> Attempted[T]:
    """The retry layer over the limiter layer, for one call: ``Attempted`` counts its 429s.

    Waits sleep on ``clock`` (default: the limiter's); see ``limited`` and ``retry.retried``.
    """
    stop = stop if stop is not None else Stop()  # one that is never requested
    seen = 0

    def rate_limited(retry_after: float) -> None:
        nonlocal seen
        seen += 1
        if on_rate_limited is not None:
            on_rate_limited(retry_after)

    async def attempt() -> T:
        return await limited(
            call,
            limiter=limiter,
            stop=stop,
            default_retry_after=policy.default_retry_after,
            on_rate_limited=rate_limited,
            call_log=call_log,
        )

    attempted = await retried(
        attempt,
        policy=policy,
        clock=clock if clock is not None else limiter.clock,
        stop=stop,
        rng=rng,
    )
    return replace(attempted, rate_limited=seen)


class Calls:
    """A run's stack of call layers over one client, one limiter and one stop token.

    ``await calls(endpoint)`` sends ``endpoint(client)`` through every layer and returns its
    ``Attempted``; it raises ``Stopped`` (the run is stopping: nothing was sent, or a hard stop
    cancelled it), ``FatalRemoteError`` (401/403: the run is stopped already) and
    ``RemoteError`` (a 4xx no retry can change). Closing it closes the client and leaves the
    shared budget.
    """

    def __init__(
        self,
        client: DescopeClient,
        limiter: RateLimiter,
        policy: RetryPolicy,
        *,
        stop: Stop | None = None,
        circuit: Circuit | None = None,
        on_rate_limited: Callable[[float], None] | None = None,
        call_log: CallLog | None = None,
    ) -> None:
        self.client = client
        self.limiter = limiter
        self.policy = policy
        self.stop = stop if stop is not None else Stop()
        self.circuit = circuit
        self.count = CallCount()
        self._on_rate_limited = on_rate_limited
        self._call_log = call_log

    async def __call__(
        self,
        endpoint: Callable[[DescopeClient], Awaitable[T]],
        *,
        verdicts: Verdicts[T] | None = None,
        policy: RetryPolicy | None = None,
        ahead: Callable[[], None] | None = None,
    ) -> Attempted[T]:
        """Send ``endpoint(client)`` through the stack (``policy`` replaces the run's).

        ``ahead`` runs once, when the first attempt holds its slot and is about to leave: the
        write-ahead record of a call that may change users (if it raises, nothing is sent).
        """
        # stop: nothing starts once the run is stopping
        self.stop.check()
        try:
            attempted = await self._retried(endpoint, policy or self.policy, ahead)
        except UnreachableError as exc:
            # nothing listens there: start nothing more (a call in flight, if any, cannot
            # connect either, but it is not cut: it might be the one that did)
            self.stop.request(Reason.UNREACHABLE, fatal=exc)
            log.error("unreachable", base_url=exc.base_url)
            raise
        except FatalRemoteError as exc:
            # no later call can succeed: stop the run and cancel the calls in flight
            self.stop.request(Reason.UNAUTHORIZED, hard=True, fatal=exc)
            raise
        except RemoteError as exc:  # a 4xx for the call as a whole: it failed for good
            self._record([failure_label(exc, Reason.REJECTED)])
            raise
        self._record((verdicts or one_call)(attempted))
        return attempted

    def _record(self, outcomes: Iterable[str | None]) -> None:
        if self.circuit is not None:
            for failure in outcomes:
                self.circuit.record(failure)

    async def _retried(
        self,
        endpoint: Callable[[DescopeClient], Awaitable[T]],
        policy: RetryPolicy,
        ahead: Callable[[], None] | None = None,
    ) -> Attempted[T]:
        async def http() -> T:
            nonlocal ahead
            if ahead is not None:
                ahead()
                ahead = None
            self.count.calls += 1
            return await endpoint(self.client)

        return await call_with_retry(
            http,
            limiter=self.limiter,
            policy=policy,
            stop=self.stop,
            on_rate_limited=self._rate_limited,
            call_log=self._call_log,
        )

    def _rate_limited(self, retry_after: float) -> None:
        self.count.rate_limited += 1
        if self._on_rate_limited is not None:
            self._on_rate_limited(retry_after)

    async def aclose(self) -> None:
        """Close the connection pool and leave the shared budget."""
        self.limiter.close()
        await self.client.aclose()


def open_calls(
    settings: Settings,
    target: Endpoint,
    transport: httpx.AsyncBaseTransport | None,
    *,
    stop: Stop,
    progress: Progress | None = None,
    call_times: Iterable[float] = (),
    call_log: CallLog | None = None,
) -> Calls:
    """The stack of one run: its client, its share of the project's budget, its retry policy
    and circuit breaker, all under ``stop``.

    ``target`` is the project called (its key a ``Secret`` until the client builds the header);
    ``call_times`` are the wall times of the calls a previous run of this journal made.
    """
    policy = RetryPolicy(
        max_attempts=settings.max_attempts,
        wait_initial=settings.retry_wait_initial,
        wait_max=settings.retry_wait_max,
        wait_jitter=settings.retry_wait_initial,
    )
    client = DescopeClient(
        project_id=target.project_id,
        management_key=target.management_key,
        base_url=target.base_url,
        timeout=settings.timeout,
        max_connections=settings.concurrency,
        transport=transport,
    )
    # runs on one project share its budget; the embedded emulator is not that project. Opened
    # last: a store holds a heartbeat thread until the stack is closed
    store = "none" if settings.emulator else settings.budget_store
    limiter = RateLimiter(
        settings.rate_calls,
        settings.rate_period,
        margin=settings.rate_margin,
        shared=open_budget(
            store, target.project_id, period=settings.rate_period, state_dir=settings.state_dir
        ),
    )
    # a restarted run must not spend again the window its predecessor spent just before
    limiter.seed(call_times)
    return Calls(
        client,
        limiter,
        policy,
        stop=stop,
        circuit=Circuit(stop, settings.max_error_rate),
        on_rate_limited=SlowDown(limiter, progress),
        call_log=call_log,
    )
