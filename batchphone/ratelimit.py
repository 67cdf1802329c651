"""The budget: at most N call starts in any interval of W seconds, and a global pause on 429.

Descope limits user-management calls per project and answers a burst with a block of the whole
project for the rest of the period (see docs/descope-api.md). Its window algorithm is not
published, so this limiter keeps the one promise that is safe under every algorithm (fixed
window, sliding window, leaky bucket): never more than ``calls`` starts in **any** interval of
``period`` seconds (plus a safety margin). It is a sliding log: the start times of the last
``calls`` calls; a call may start at ``t`` only if ``t >= log[-calls] + period * (1 + margin)``.

Why not a token bucket: a full bucket lets ``calls`` go at once and refills during the same
window, so up to ``2 * calls`` can land in one period, which is exactly the burst that costs a
minute of zero throughput. Why written by hand: the libraries that exist (aiolimiter, limits,
pyrate-limiter) are token/leaky buckets or fixed windows, are tied to asyncio or to
``time.monotonic``, and none takes an injectable clock that works under both anyio backends.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import anyio

__all__ = ["Clock", "LimiterStats", "RateLimiter", "SystemClock"]

# A sleep on asyncio may return up to one clock tick early, and a wake-up that is a hair
# short of its deadline must not spin on zero-length sleeps: never sleep less than this.
_MIN_SLEEP = 1e-6


class Clock(Protocol):
    """Where the limiter and the retry loop read time and sleep; fake it in tests."""

    def now(self) -> float:
        """Monotonic seconds (any origin)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` on this clock."""
        ...


class SystemClock:
    """The event loop's clock: ``anyio.current_time`` and ``anyio.sleep``.

    The loop's clock rather than ``time.monotonic`` so that a virtual-time loop (trio's
    ``MockClock``, a virtual asyncio loop) moves the limiter's time together with every
    other timeout in the program.
    """

    __slots__ = ()

    def now(self) -> float:
        """The event loop's monotonic time (needs a running loop)."""
        return anyio.current_time()

    async def sleep(self, seconds: float) -> None:
        """``anyio.sleep``."""
        await anyio.sleep(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"


@dataclass(frozen=True, slots=True)
class LimiterStats:
    """What the limiter did so far.

    ``waited_s`` counts the time the head of the queue slept for the window or a pause: the
    time the whole pipeline was held back, counted once however many workers were queued.
    """

    calls: int
    waited_s: float
    pauses: int


class RateLimiter:
    """At most ``calls`` call starts in any interval of ``period * (1 + margin) + margin_s`` s.

    ``margin`` (a fraction of the period, default 2%, which leaves 98% of the budget usable)
    absorbs the difference between when a call starts here and when the server counts it;
    ``margin_s`` adds absolute seconds for links whose latency jitter is larger than that.
    Waiters are served first come, first served; ``pause`` holds them all back.
    """

    def __init__(
        self,
        calls: int,
        period: float,
        *,
        margin: float = 0.02,
        margin_s: float = 0.0,
        clock: Clock | None = None,
    ) -> None:
        if calls < 1:
            raise ValueError(f"calls must be at least 1, not {calls}")
        if not period > 0:
            raise ValueError(f"period must be positive, not {period}")
        if margin < 0 or margin_s < 0:
            raise ValueError("margin and margin_s must not be negative")
        self.calls = calls
        self.period = period
        #: The interval in which at most ``calls`` starts may fall.
        self.window = period * (1.0 + margin) + margin_s
        self.clock: Clock = clock if clock is not None else SystemClock()
        # only the last `calls` starts matter: log[0] is the start `calls` calls ago
        self._log: deque[float] = deque(maxlen=calls)
        self._paused_until = float("-inf")
        # anyio.Lock is FIFO under both backends and hands over to the next waiter on release,
        # so the lock queue is the fairness queue; only its holder sleeps on the clock.
        self._lock = anyio.Lock()
        self._acquired = 0
        self._waited = 0.0
        self._pauses = 0

    def __repr__(self) -> str:
        return (
            f"RateLimiter(calls={self.calls}, period={self.period}, window={self.window:.3f}, "
            f"clock={self.clock!r})"
        )

    @property
    def paused_until(self) -> float:
        """Clock time before which no ``acquire`` returns (``-inf`` when never paused)."""
        return self._paused_until

    @property
    def stats(self) -> LimiterStats:
        """Calls acquired, seconds waited for the window or a pause, pauses received."""
        return LimiterStats(calls=self._acquired, waited_s=self._waited, pauses=self._pauses)

    def next_start(self) -> float:
        """The earliest clock time at which the next call may start (ignoring the queue)."""
        earliest = self._paused_until
        if len(self._log) == self.calls:
            earliest = max(earliest, self._log[0] + self.window)
        return earliest

    async def acquire(self) -> None:
        """Return when one call may start now, and record its start.

        Cancellation-safe: a waiter cancelled in the queue or while sleeping leaves the lock
        to the next in line and records nothing.
        """
        async with self._lock:
            clock = self.clock
            while True:
                now = clock.now()
                # re-read after every sleep: a pause may have been extended meanwhile
                remaining = self.next_start() - now
                if remaining <= 0:
                    break
                await clock.sleep(max(remaining, _MIN_SLEEP))
                self._waited += clock.now() - now
            self._log.append(now)
            self._acquired += 1

    def pause(self, seconds: float) -> None:
        """A 429 arrived: no ``acquire`` returns before ``now + seconds``.

        Extends an existing pause, never shortens it.
        """
        until = self.clock.now() + max(seconds, 0.0)
        if until > self._paused_until:
            self._paused_until = until
        self._pauses += 1

    def slow_down(self, factor: float = 0.9) -> int:
        """Keep only ``factor`` of the calls per window from now on; return the new number.

        A 429 although this limiter kept its budget means the budget is shared (the customer's
        own traffic) or the server counts differently than we think. Another block would cost a
        whole penalty of zero throughput for everyone, so the run settles for less, for good.
        """
        if not 0 < factor <= 1:
            raise ValueError(f"factor must be in (0, 1], not {factor}")
        calls = max(1, int(self.calls * factor))
        if calls < self.calls:
            self.calls = calls
            self._log = deque(self._log, maxlen=calls)  # the newest `calls` starts
        return self.calls

    def seed(self, wall_timestamps: Iterable[float], *, wall_now: float | None = None) -> None:
        """Fill the log with call times of a previous run (epoch seconds) after a restart.

        The previous run may have spent most of the current window just before it crashed;
        without this, the restarted run would spend the full budget again and earn a 429.
        Times are converted to this clock by their age relative to ``wall_now`` (default:
        ``time.time()``); times in the future (wall clock stepped back) count as now.
        Passing finish times instead of start times is safe: it only makes the wait longer.
        """
        wall_now = time.time() if wall_now is None else wall_now
        now = self.clock.now()
        recent = heapq.nlargest(self.calls, wall_timestamps)
        converted = [now - max(wall_now - ts, 0.0) for ts in recent]
        merged = sorted([*self._log, *converted])
        self._log.clear()
        self._log.extend(merged[-self.calls :])
