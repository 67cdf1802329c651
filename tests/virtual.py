"""Virtual time for async tests: minutes of limiter, emulator and retry time in milliseconds.

A test marked ``@pytest.mark.virtual_time`` (the ``anyio_backend`` fixture of conftest.py reads
the mark) runs on an event loop whose clock only moves when every task waits: trio's
``MockClock(autojump_threshold=0)``, and :class:`VirtualTimeLoop` for asyncio. Three rules keep
whole runs (reader threads, journal, result file) deterministic on it:

* **Blocking work takes no virtual time.** While an ``anyio.to_thread.run_sync`` call is in a
  worker thread, the clock stands still: the loop waits for the thread for real instead of
  jumping to its next timer (an HTTP timeout, the journal's fsync tick). A slow or loaded
  machine then changes how long a test takes, never what it sees.
* **The wall clock moves with the loop.** ``time.time()`` reads ``start + virtual elapsed``, so
  the epoch times that a run journals for its calls (and the limiter's seeding from them after a
  restart) and the shared budget file agree with the loop's clock.
* **The emulator shares the loop's clock:** build it with ``clock=VirtualClock.now`` (or
  ``anyio.current_time`` inside the loop), so its windows, blocks and latency move with it.

Tests of real processes, sockets and signals stay on real time.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import pytest

__all__ = ["VirtualClock", "VirtualTimeLoop", "install", "virtual_backend"]

_REAL_RUN_SYNC = anyio.to_thread.run_sync
_REAL_TIME = time.time


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose time jumps to the next timer whenever no task can run.

    The asyncio twin of trio's ``MockClock(autojump_threshold=0)``: ``select`` with a
    timeout is polled without blocking and the virtual clock is moved by the timeout instead.
    While ``threads_busy`` is positive (a worker thread is running) it waits for real I/O
    (the thread's wake-up) and leaves the clock alone.
    """

    def __init__(self) -> None:
        super().__init__()
        self._virtual_now = 0.0
        self.threads_busy = 0
        select = self._selector.select  # type: ignore[attr-defined]

        def virtual_select(timeout: float | None = None) -> Any:
            events = select(0)
            if events or timeout == 0:
                return events
            if timeout is None:  # no timer at all: only real I/O can wake the loop
                return select(None)
            if self.threads_busy:  # a finishing thread wakes the loop through its self-pipe
                return select(0.1)
            self._virtual_now += timeout
            return events

        self._selector.select = virtual_select  # type: ignore[attr-defined]

    def time(self) -> float:
        return self._virtual_now


class VirtualClock:
    """The virtual clock of one test's loop, readable from any thread (the loop need not run)."""

    def __init__(self) -> None:
        self._mock: Any = None  # trio's MockClock
        self._loop: VirtualTimeLoop | None = None
        self._trio_threads_busy = 0

    def now(self) -> float:
        """Virtual seconds since the loop started (0 before it does)."""
        if self._mock is not None:
            return float(self._mock.current_time())
        return self._loop.time() if self._loop is not None else 0.0

    def asyncio_loop(self) -> VirtualTimeLoop:
        """The loop factory for anyio's asyncio backend: a new loop, remembered."""
        self._loop = VirtualTimeLoop()
        return self._loop

    async def run_sync(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``anyio.to_thread.run_sync``, with this clock stopped while the thread runs."""
        if self._loop is not None:
            self._loop.threads_busy += 1
            try:
                return await _REAL_RUN_SYNC(func, *args, **kwargs)
            finally:
                self._loop.threads_busy -= 1
        # trio: no autojump while a thread runs; its end wakes the loop (trio's wake-up socket)
        self._trio_threads_busy += 1
        self._mock.autojump_threshold = math.inf
        try:
            return await _REAL_RUN_SYNC(func, *args, **kwargs)
        finally:
            self._trio_threads_busy -= 1
            if self._trio_threads_busy == 0:
                self._mock.autojump_threshold = 0


def virtual_backend(name: str, clock: VirtualClock | None = None) -> tuple[str, dict[str, Any]]:
    """An anyio backend spec (``anyio_backend`` value) running on virtual time."""
    clock = clock if clock is not None else VirtualClock()
    if name == "trio":
        from trio.testing import MockClock

        clock._mock = MockClock(autojump_threshold=0)
        return "trio", {"clock": clock._mock}
    return "asyncio", {"loop_factory": clock.asyncio_loop}


def install(monkeypatch: pytest.MonkeyPatch, clock: VirtualClock) -> None:
    """Stop the clock during worker threads, and put ``time.time`` on ``clock`` (see above)."""
    monkeypatch.setattr(anyio.to_thread, "run_sync", clock.run_sync)
    start = _REAL_TIME()
    monkeypatch.setattr(time, "time", lambda: start + clock.now())


class SleptClock:
    """A limiter ``Clock`` (``now``/``sleep``) whose time moves only when someone sleeps on it:
    for tests of one layer, without an event loop on virtual time."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds
        await anyio.lowlevel.checkpoint()
