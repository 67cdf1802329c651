"""Attempts and backoff for one call; 429s handled apart from both.

Three separate pieces decide when a call goes out: the limiter (rate: at most N per window),
the pool (concurrency: N workers) and this loop (how often one row is tried again). A 429 is
the limiter's business, not the row's: it pauses every worker sharing the limiter and the same
call is sent again, without counting an attempt, so a 429 never makes a row fail.

This is the retry layer of the stack in ``remote.calls`` (stop check -> circuit -> retry ->
limiter -> HTTP): 429s are handled below it, by the limiter layer, so only transient errors
(5xx, timeouts, dropped connections) reach this loop.

Why not ``stamina`` (dropped from the dependencies): with 429s handled outside, the one thing
left for it would be the backoff loop, and it cannot run that here. Its sleeps go to the real
``asyncio.sleep``/``trio.sleep`` (its only test hook turns waits off entirely), while these
sleeps must run on the limiter's injectable clock, so that tests assert the waits on virtual
time, and inside the stop token's cancel scope, so that a stop ends a backoff at once. The
formula is stamina's exponential backoff, with the jitter added after the cap so that workers
that all hit the cap still spread out:
``min(wait_max, wait_initial * 2 ** (n - 1)) + uniform(0, wait_jitter)``.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from batchphone.errors import TransientError
from batchphone.remote.ratelimit import Clock
from batchphone.remote.stop import Stop, Stopped

__all__ = ["Attempted", "RetryPolicy", "retried"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently one call is tried again after a transient error."""

    max_attempts: int = 5
    wait_initial: float = 0.5
    wait_max: float = 30.0
    wait_jitter: float = 1.0
    #: Seconds to pause when a 429 carries no usable ``Retry-After``.
    default_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {self.max_attempts}")
        if min(self.wait_initial, self.wait_max, self.wait_jitter) < 0:
            raise ValueError("waits must not be negative")
        if not self.default_retry_after > 0:
            raise ValueError("default_retry_after must be positive")

    def backoff(self, failures: int, *, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``failures``-th failed attempt (1-based)."""
        exponent = min(failures - 1, 64)  # 2**64 half-seconds is past any wait_max
        base = min(self.wait_max, self.wait_initial * 2.0**exponent)
        if not self.wait_jitter:
            return base
        return base + (rng or random).uniform(0.0, self.wait_jitter)


@dataclass(frozen=True, slots=True)
class Attempted(Generic[T]):
    """The end of the retry layer (``retried``): a value, or the last transient error.

    ``attempts`` counts the calls that got an answer other than 429; ``rate_limited`` the
    429s met on the way.
    """

    value: T | None
    error: TransientError | None
    attempts: int
    rate_limited: int


async def retried(
    attempt: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    clock: Clock,
    stop: Stop | None = None,
    rng: random.Random | None = None,
) -> Attempted[T]:
    """The retry layer: run ``attempt`` until it returns or ``policy`` gives up.

    - ``TransientError``: count the attempt; after ``policy.max_attempts`` return it in
      ``Attempted.error``, else sleep the backoff on ``clock``; the first ``stop`` ends the
      sleep (``Stopped``).
    - Anything else (``FatalRemoteError``, ``Stopped``, cancellation, bugs) propagates.

    429s never get here: the limiter layer below (``calls.limited``) waits them out and sends
    again, so a 429 never costs an attempt.
    """
    stop = stop if stop is not None else Stop()  # one that is never requested
    attempts = 0
    while True:
        try:
            value = await attempt()
        except TransientError as exc:
            attempts += 1
            if attempts >= policy.max_attempts:
                return Attempted(value=None, error=exc, attempts=attempts, rate_limited=0)
            try:
                with stop.waiting():
                    await clock.sleep(policy.backoff(attempts, rng=rng))
            except Stopped as stopped:
                # an attempt went out and its answer was lost: it may have been applied
                raise Stopped(stopped.reason, maybe_applied=True) from None
            continue
        except Stopped as stopped:
            if attempts and not stopped.maybe_applied:
                raise Stopped(stopped.reason, maybe_applied=True) from None
            raise
        return Attempted(value=value, error=None, attempts=attempts + 1, rate_limited=0)
