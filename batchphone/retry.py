"""Attempts and backoff for one call; 429s handled apart from both.

Three separate pieces decide when a call goes out: the limiter (rate: at most N per window),
the pool (concurrency: N workers) and this loop (how often one row is tried again). A 429 is
the limiter's business, not the row's: it pauses every worker sharing the limiter and the same
call is sent again, without counting an attempt, so a 429 never makes a row fail.

The backoff is computed here rather than with ``stamina``: stamina sleeps on the real clock
(its only test hook turns waits off entirely) and counts every exception as an attempt, while
this loop must sleep on an injectable clock and must not count 429s. The formula is stamina's
exponential backoff, with the jitter added after the cap so that workers that all hit the cap
still spread out: ``min(wait_max, wait_initial * 2 ** (n - 1)) + uniform(0, wait_jitter)``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from batchphone.errors import RateLimitedError, TransientError
from batchphone.ratelimit import Clock, RateLimiter
from batchphone.stop import Stop

__all__ = ["Attempted", "RetryPolicy", "call_with_retry"]

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
    """The end of ``call_with_retry``: a value, or the last transient error.

    ``attempts`` counts the calls that got an answer other than 429; ``rate_limited`` the
    429s met on the way.
    """

    value: T | None
    error: TransientError | None
    attempts: int
    rate_limited: int


async def call_with_retry(
    call: Callable[[], Awaitable[T]],
    *,
    limiter: RateLimiter,
    policy: RetryPolicy,
    clock: Clock | None = None,
    on_rate_limited: Callable[[float], None] | None = None,
    rng: random.Random | None = None,
    stop: Stop | None = None,
    on_call: Callable[[float], None] | None = None,
) -> Attempted[T]:
    """Run ``call`` under ``limiter`` until it returns, or ``policy`` gives up.

    - Every attempt holds a limiter slot from before it starts until its answer arrives (or
      it is given up: an error, a timeout, cancellation); the slot frees one window later.
    - ``RateLimitedError``: pause the limiter (every worker sharing it waits) for its
      ``retry_after`` (or ``policy.default_retry_after`` when it is not positive), report it to
      ``on_rate_limited``, and send again without counting an attempt.
    - ``TransientError``: count the attempt; after ``policy.max_attempts`` return it in
      ``Attempted.error``, else sleep the backoff on ``clock`` (default: the limiter's clock).
    - Anything else (``FatalRemoteError``, cancellation, bugs) propagates.
    - ``stop``: no attempt starts once it is requested, and every wait before one (the limiter's
      slot or pause, the backoff) ends at its first request, raising ``Stopped``; a hard stop
      cancels the call on the wire (``Stopped`` too).
    - ``on_call`` gets the wall time (epoch seconds) each call was answered or given up.
    """
    clock = clock if clock is not None else limiter.clock
    stop = stop if stop is not None else Stop()  # one that is never requested
    attempts = 0
    rate_limited = 0
    while True:
        with stop.waiting():
            slot = await limiter.acquire()
        try:
            try:
                with stop.calling():
                    value = await call()
            finally:
                # the slot is held until the answer (or the give-up) and frees one window later
                limiter.release(slot)
                if on_call is not None:
                    on_call(time.time())
        except RateLimitedError as exc:
            rate_limited += 1
            retry_after = exc.retry_after if exc.retry_after > 0 else policy.default_retry_after
            limiter.pause(retry_after)
            if on_rate_limited is not None:
                on_rate_limited(retry_after)
            continue
        except TransientError as exc:
            attempts += 1
            if attempts >= policy.max_attempts:
                return Attempted(
                    value=None, error=exc, attempts=attempts, rate_limited=rate_limited
                )
            with stop.waiting():
                await clock.sleep(policy.backoff(attempts, rng=rng))
            continue
        return Attempted(value=value, error=None, attempts=attempts + 1, rate_limited=rate_limited)
