"""The budget: at most N calls held or answered within any W seconds, and a pause on 429.

Descope limits user-management calls per project and answers a burst with a block of the whole
project for the rest of the period (see docs/descope-api.md). Its window algorithm is not
published and where it counts a call is unknown: anywhere between our send and our receipt of
the answer. So this limiter keeps the one promise that is safe under every algorithm and every
network delay: a call takes a slot before it starts, gives it back when its answer arrives (or
when it is given up: timeout, error, cancellation), and the slot is free again one window after
that. A call may start at ``t`` only while fewer than ``calls`` slots are held or were given
back after ``t - window``. Every call's arrival lies between its start and its answer, so no
``calls + 1`` arrivals can fall within one window, whatever the delay (proof: the last of them
to start saw all the others held or given back less than a window before).

The log (``SlidingLog``) is the give-back times of the last ``calls`` calls, plus a count of
the slots held; ``RateLimiter`` queues the callers on it, first come, first served.
A fractional ``margin`` (default 0.05%, the most an NTP-disciplined clock's rate may differ from
the server's: 30 ms at 60 s) covers clock skew; at 60 s windows and 100 ms latency 99.8% of
the budget stays usable.

Why not a token bucket: a full bucket lets ``calls`` go at once and refills during the same
window, so up to ``2 * calls`` can land in one period, which is exactly the burst that costs a
minute of zero throughput. Why written by hand: the libraries that exist (aiolimiter, limits,
pyrate-limiter) are token/leaky buckets or fixed windows that count starts, are tied to asyncio
or to ``time.monotonic``, and none takes an injectable clock that works under both anyio
backends.

Runs that share a project share its budget through a :class:`SharedBudget` (a file or Redis,
see ``remote.budget``): the limiter then takes each slot from the shared log as well (its
``SharedLeg``). When the store fails (its disk is full) while a call is on the wire, the call's
answer is kept: the failure is raised by the next ``acquire``, before anything more is sent.
"""

from __future__ import annotations

import contextlib
import heapq
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import anyio.to_thread

from batchphone.errors import BatchphoneError

__all__ = [
    "DEFAULT_MARGIN",
    "Clock",
    "LimiterStats",
    "RateLimiter",
    "SharedBudget",
    "SharedLeg",
    "SlidingLog",
    "Slot",
    "SystemClock",
]

#: The default fractional margin: clock skew only (500 ppm, the most NTP slews a clock).
DEFAULT_MARGIN = 0.0005

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


class SharedBudget(Protocol):
    """A budget log shared by every run on one project (``remote.budget`` has the stores).

    Its methods are quick and synchronous (a locked file, one Redis script), so that a slot can
    be given back from a ``finally`` block even while the task is being cancelled.
    """

    def take(self, calls: int, window: float) -> tuple[str | None, float]:
        """Take a slot: ``(slot_id, 0)``, or ``(None, seconds to wait before asking again)``."""
        ...

    def release(self, slot_id: str) -> None:
        """The call on ``slot_id`` got its answer (or was given up) now."""
        ...

    def pause(self, seconds: float) -> None:
        """A 429 arrived: no run on the project takes a slot for ``seconds``."""
        ...

    def close(self) -> None:
        """This run is done: its share goes back to the other runs."""
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


@dataclass(slots=True, eq=False)
class Slot:
    """One call's place in the budget, from before its start until its answer."""

    taken_at: float
    shared_id: str | None = None
    released_at: float | None = None


class SlidingLog:
    """The limiter's own window: at most ``calls`` slots held or given back within ``window``.

    Bookkeeping on clock times only (it never waits): the give-back times of the last
    ``calls`` calls, the slots held, and the end of a pause.
    """

    def __init__(self, calls: int, window: float) -> None:
        self.calls = calls
        #: A slot given back at ``t`` is free again at ``t + window``.
        self.window = window
        #: Slots taken and not given back yet (calls in flight).
        self.held = 0
        #: Clock time before which no slot is taken (``-inf`` when never paused).
        self.paused_until = float("-inf")
        # give-back times, oldest first; only the last `calls` can matter
        self._given_back: deque[float] = deque(maxlen=calls)

    def next_start(self) -> float:
        """The earliest clock time at which the next call may start (ignoring the queue).

        ``inf`` while every slot is held: the next one is known only once a call is answered.
        """
        free = self.calls - self.held
        if free <= 0:
            return math.inf
        earliest = self.paused_until
        if len(self._given_back) >= free:
            # `free` slots are not held; the oldest of the last `free` give-backs decides
            earliest = max(earliest, self._given_back[-free] + self.window)
        return earliest

    def hold(self) -> None:
        """A call starts now: one more slot held."""
        self.held += 1

    def give_back(self, now: float) -> None:
        """A call was answered (or given up) at ``now``: its slot frees one window on."""
        self.held -= 1
        self._given_back.append(now)

    def pause(self, until: float) -> None:
        """No slot before ``until``; extends a pause, never shortens it."""
        self.paused_until = max(self.paused_until, until)

    def slow_down(self, factor: float = 0.9) -> int:
        """Keep only ``factor`` of the calls per window from now on; return the new number.

        A 429 although the limiter kept its budget means the budget is shared (the customer's
        own traffic) or the server counts differently than we think. Another block would cost a
        whole penalty of zero throughput for everyone, so the run settles for less, for good.
        """
        if not 0 < factor <= 1:
            raise ValueError(f"factor must be in (0, 1], not {factor}")
        calls = max(1, int(self.calls * factor))
        if calls < self.calls:
            self.calls = calls
            self._given_back = deque(self._given_back, maxlen=calls)  # the newest `calls`
        return self.calls

    def seed(self, given_back: Iterable[float]) -> None:
        """Add give-back times (clock times) of calls made before this log existed."""
        merged = sorted([*self._given_back, *given_back])
        self._given_back.clear()
        self._given_back.extend(merged[-self.calls :])


class SharedLeg:
    """The limiter's leg in a budget shared with other runs (``remote.budget``): every slot is
    taken from the store as well.

    A store failure met by a give-back or a pause (while calls are on the wire) is kept and
    raised by the next ``check``: the answer of a call on the wire matters more than the
    store's record of it.
    """

    def __init__(self, store: SharedBudget) -> None:
        self.store = store
        self._failure: BatchphoneError | None = None

    def check(self) -> None:
        """Raise the store's failure met since, if any."""
        if self._failure is not None:
            raise self._failure

    async def take(self, calls: int, window: float) -> tuple[str | None, float]:
        """``SharedBudget.take``, off the event loop (a locked file or a Redis round trip),
        and shielded, so that a slot taken in the thread is never lost to a cancel."""
        with anyio.CancelScope(shield=True):
            taken = await anyio.to_thread.run_sync(self.store.take, calls, window)
        return taken

    def release(self, slot_id: str) -> None:
        """The call on ``slot_id`` was answered or given up now."""
        self._keep_failure(self.store.release, slot_id)

    def pause(self, seconds: float) -> None:
        """Every run on the project waits ``seconds``."""
        self._keep_failure(self.store.pause, seconds)

    def _keep_failure(self, change: Callable[[Any], None], argument: Any) -> None:
        try:
            change(argument)
        except BatchphoneError as exc:
            self._failure = self._failure or exc

    def close(self) -> None:
        """Give this run's share back to the other runs.

        A store that fails here is left as it is: the run is over, and a run that stopped
        beating loses its share on its own.
        """
        with contextlib.suppress(BatchphoneError):
            self.store.close()


class RateLimiter:
    """At most ``calls`` slots held or given back within any ``window`` seconds.

    ``window`` is ``period * (1 + margin) + margin_s``: ``margin`` (a fraction, default
    :data:`DEFAULT_MARGIN`) and ``margin_s`` (seconds) cover clock skew against the server.
    Waiters are served first come, first served; ``pause`` holds them all back. Use
    ``async with limiter.slot():`` around one call, or ``acquire`` and ``release``. The rule
    is ``log`` (a ``SlidingLog``); a ``shared`` budget adds its own leg (``SharedLeg``).
    """

    def __init__(
        self,
        calls: int,
        period: float,
        *,
        margin: float = DEFAULT_MARGIN,
        margin_s: float = 0.0,
        clock: Clock | None = None,
        shared: SharedBudget | None = None,
    ) -> None:
        if calls < 1:
            raise ValueError(f"calls must be at least 1, not {calls}")
        if not period > 0:
            raise ValueError(f"period must be positive, not {period}")
        if margin < 0 or margin_s < 0:
            raise ValueError("margin and margin_s must not be negative")
        self.period = period
        self.log = SlidingLog(calls, period * (1.0 + margin) + margin_s)
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.shared = SharedLeg(shared) if shared is not None else None
        # anyio.Lock is FIFO under both backends and hands over to the next waiter on release,
        # so the lock queue is the fairness queue; only its holder sleeps on the clock.
        self._lock = anyio.Lock()
        # set when a slot comes back, for a head of the queue that waits on held slots
        self._given_back: anyio.Event | None = None
        self._acquired = 0
        self._waited = 0.0
        self._pauses = 0

    def __repr__(self) -> str:
        return (
            f"RateLimiter(calls={self.log.calls}, period={self.period}, "
            f"window={self.log.window:.3f}, clock={self.clock!r})"
        )

    @property
    def stats(self) -> LimiterStats:
        """Calls acquired, seconds waited for the window or a pause, pauses received."""
        return LimiterStats(calls=self._acquired, waited_s=self._waited, pauses=self._pauses)

    async def acquire(self) -> Slot:
        """Return when one call may start now, holding a slot for it; ``release`` it after.

        Cancellation-safe: a waiter cancelled in the queue or while sleeping leaves the lock
        to the next in line and holds nothing.
        """
        async with self._lock:
            clock, log = self.clock, self.log
            while True:
                if self.shared is not None:
                    self.shared.check()
                now = clock.now()
                # re-read after every wait: a pause may have been extended meanwhile
                start = log.next_start()
                if start == math.inf:
                    given_back = self._given_back = anyio.Event()
                    await given_back.wait()
                elif start > now:
                    await clock.sleep(max(start - now, _MIN_SLEEP))
                elif self.shared is not None:
                    shared_id, wait = await self.shared.take(log.calls, log.window)
                    if shared_id is not None:
                        return self._hold(now, shared_id)
                    await clock.sleep(max(wait, _MIN_SLEEP))
                else:
                    return self._hold(now, None)
                self._waited += clock.now() - now

    def _hold(self, now: float, shared_id: str | None) -> Slot:
        self.log.hold()
        self._acquired += 1
        return Slot(taken_at=now, shared_id=shared_id)

    def release(self, slot: Slot) -> None:
        """The call on ``slot`` got its answer, or was given up, now: free it one window on.

        Synchronous, so it runs in a ``finally`` even under cancellation; a second release of
        the same slot does nothing.
        """
        if slot.released_at is not None:
            return
        now = self.clock.now()
        slot.released_at = now
        self.log.give_back(now)
        if self._given_back is not None:
            self._given_back.set()
            self._given_back = None
        if self.shared is not None and slot.shared_id is not None:
            self.shared.release(slot.shared_id)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        """Hold a slot for the body (one call); it is given back however the body ends."""
        taken = await self.acquire()
        try:
            yield taken
        finally:
            self.release(taken)

    def pause(self, seconds: float) -> None:
        """A 429 arrived: no ``acquire`` returns before ``now + seconds``.

        Extends an existing pause, never shortens it; a shared budget pauses every run.
        """
        self.log.pause(self.clock.now() + max(seconds, 0.0))
        self._pauses += 1
        if self.shared is not None:
            self.shared.pause(max(seconds, 0.0))

    def seed(self, wall_timestamps: Iterable[float], *, wall_now: float | None = None) -> None:
        """Fill the log with answer times of a previous run (epoch seconds) after a restart.

        The same rule as a live call: each slot is free one window after its answer (or the
        time its call was given up). The previous run may have spent most of the current window
        just before it crashed; without this, the restarted run would spend the full budget
        again and earn a 429. Times are converted to this clock by their age relative to
        ``wall_now`` (default: ``time.time()``); times in the future (wall clock stepped back)
        count as now.
        """
        wall_now = time.time() if wall_now is None else wall_now
        now = self.clock.now()
        recent = heapq.nlargest(self.log.calls, wall_timestamps)
        self.log.seed(now - max(wall_now - ts, 0.0) for ts in recent)

    def close(self) -> None:
        """Give this run's share of a shared budget back to the other runs."""
        if self.shared is not None:
            self.shared.close()
