"""A project's budget, as harsh as Descope's CDN: N calls per W seconds, then a P-second block.

Two counters decide when the budget is exceeded: a sliding window (at most N calls in any
interval ``(t-W, t]``) and a fixed one (at most N in each ``[k*W, (k+1)*W)`` from the first
call).
Any client that never exceeds N in any sliding window also never exceeds a fixed one, so the
sliding counter is the default and the stricter test. Whatever the algorithm, the limiter also
keeps a sliding count of every call it saw, whose maximum the stats report.

Time is whatever the injected clock says, so the same semantics hold at 500 per 60 s and at
50 per 1 s, and tests drive it with a fake clock. Every operation is O(1) amortized.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Literal

__all__ = ["Algorithm", "RateLimiter", "retry_after_header"]

Algorithm = Literal["sliding", "fixed"]


class _SlidingCounter:
    """Calls in the last ``window`` seconds: a deque of their times, oldest first."""

    def __init__(self, window: float) -> None:
        self._window = window
        self._times: deque[float] = deque()

    def add(self, now: float) -> int:
        """Count a call at ``now``; the number of calls in ``(now - window, now]``."""
        times = self._times
        edge = now - self._window
        while times and times[0] <= edge:
            times.popleft()
        times.append(now)
        return len(times)


class _FixedCounter:
    """Calls in the current fixed window ``[k*W, (k+1)*W)`` counted from ``origin``.

    Without an origin, the first call sets it: the clock need not be readable before then.
    """

    def __init__(self, window: float, origin: float | None) -> None:
        self._window = window
        self._origin = origin
        self._bucket = -1
        self._count = 0

    def add(self, now: float) -> int:
        """Count a call at ``now``; the number of calls in its fixed window so far."""
        if self._origin is None:
            self._origin = now
        bucket = math.floor((now - self._origin) / self._window)
        if bucket != self._bucket:
            self._bucket = bucket
            self._count = 0
        self._count += 1
        return self._count


class RateLimiter:
    """The budget of one project; :meth:`admit` is called once per counted call."""

    def __init__(
        self,
        limit: int,
        window: float,
        penalty: float,
        algorithm: Algorithm = "sliding",
        *,
        origin: float | None = None,
    ) -> None:
        if limit < 1 or window <= 0 or penalty < 0:
            raise ValueError("the rate limit needs N >= 1, W > 0 and P >= 0")
        if algorithm not in ("sliding", "fixed"):
            raise ValueError(f"unknown rate algorithm {algorithm!r}")
        self.limit = limit
        self.window = window
        self.penalty = penalty
        self.algorithm: Algorithm = algorithm
        self._seen = _SlidingCounter(window)
        self._counter = self._seen if algorithm == "sliding" else _FixedCounter(window, origin)
        self.blocked_until = -math.inf
        #: calls counted, calls answered 429, blocks started, most calls seen in one window
        self.calls = 0
        self.rejected = 0
        self.blocks = 0
        self.max_window = 0

    def admit(self, now: float) -> float | None:
        """Count one call at ``now``: ``None`` if it may proceed, else the seconds of block left.

        Calls refused during a block are counted too (assumed ``blocked-calls-count``), so a
        client that hammers a blocked project is blocked again when the block ends.
        """
        self.calls += 1
        seen = self._seen.add(now)
        in_window = seen if self._counter is self._seen else self._counter.add(now)
        if seen > self.max_window:
            self.max_window = seen
        if now < self.blocked_until:
            self.rejected += 1
            return self.blocked_until - now
        if in_window > self.limit:
            self.blocked_until = now + self.penalty
            self.blocks += 1
            self.rejected += 1
            return self.penalty
        return None

    def block(self, now: float, seconds: float) -> None:
        """Start a block of ``seconds`` now, as if the budget had just been exceeded."""
        if seconds <= 0:
            raise ValueError("a block lasts more than 0 seconds")
        self.blocked_until = max(self.blocked_until, now + seconds)
        self.blocks += 1


def retry_after_header(seconds_left: float) -> str:
    """``Retry-After`` for a block with ``seconds_left``: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds_left)))
