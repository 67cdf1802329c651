"""The limiter under virtual time: slots freed a window after the answer, FIFO, pauses, seeding.

Every async test here runs on virtual time (tests/virtual.py): the loop's clock only moves when
all tasks wait, so minutes of limiter time pass in milliseconds and every start time is exact.
"""

from __future__ import annotations

import bisect
import itertools

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchphone.remote.ratelimit import DEFAULT_MARGIN, RateLimiter, SystemClock


class RecordingClock(SystemClock):
    """The loop's (virtual) clock, remembering every sleep asked of it."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await super().sleep(seconds)


def max_in_any_window(starts: list[float], width: float) -> int:
    """The largest number of ``starts`` inside one half-open interval ``[t, t + width)``."""
    ordered = sorted(starts)
    return max(
        (bisect.bisect_left(ordered, s + width) - i for i, s in enumerate(ordered)), default=0
    )


def most_before(starts: list[float], earlier: list[float], width: float) -> int:
    """The most calls of ``starts + earlier`` in a ``width`` that ends on one of ``starts``.

    ``x <= s < x + width`` is the limiter's own float test, so the count is exact. Windows that
    end on one of ``earlier`` are not checked: those calls were not this limiter's to place.
    """
    every = starts + earlier
    return max((sum(x <= s < x + width for x in every) for s in starts), default=0)


async def instant_call(limiter: RateLimiter) -> None:
    """A call answered the moment it starts: take a slot and give it back at once."""
    limiter.release(await limiter.acquire())


async def run_acquirers(limiter: RateLimiter, n: int, latency: float = 0.0) -> list[float]:
    """Start ``n`` concurrent calls in order, each holding its slot ``latency`` s; their starts."""
    times: list[float | None] = [None] * n

    async def one(i: int) -> None:
        async with limiter.slot():
            times[i] = anyio.current_time()
            await anyio.sleep(latency)

    async with anyio.create_task_group() as group:
        for i in range(n):
            group.start_soon(one, i)
            await anyio.lowlevel.checkpoint()  # queue them in this order
    return [t for t in times if t is not None]


pytestmark = [pytest.mark.anyio, pytest.mark.virtual_time]


def test_max_in_any_window_counts_half_open_windows() -> None:
    assert max_in_any_window([0, 1, 2, 10, 10.5], 2) == 2
    assert max_in_any_window([0, 1, 2, 10, 10.5], 2.0001) == 3
    assert max_in_any_window([], 1) == 0


async def test_n_calls_start_at_once_then_the_window_decides() -> None:
    limiter = RateLimiter(3, 10.0, margin=0.0)
    t0 = anyio.current_time()
    starts = await run_acquirers(limiter, 7)
    assert [s - t0 for s in starts] == [0, 0, 0, 10, 10, 10, 20]


async def test_margin_widens_the_window_by_a_fraction_and_seconds() -> None:
    limiter = RateLimiter(2, 10.0, margin=0.1, margin_s=0.5)
    assert limiter.log.window == pytest.approx(11.5)
    t0 = anyio.current_time()
    starts = await run_acquirers(limiter, 3)
    assert starts[2] - t0 == pytest.approx(11.5)


async def test_waiters_are_served_first_come_first_served() -> None:
    limiter = RateLimiter(1, 1.0, margin=0.0)
    order: list[int] = []

    async def one(i: int) -> None:
        await instant_call(limiter)
        order.append(i)

    async with anyio.create_task_group() as group:
        for i in range(8):
            group.start_soon(one, i)
            await anyio.sleep(0.01)  # arrive in this order, long before the window frees
    assert order == list(range(8))


async def test_throughput_reaches_99_percent_of_the_budget() -> None:
    calls, period, windows = 50, 1.0, 20
    limiter = RateLimiter(calls, period)  # default margin: clock skew only
    starts: list[float] = []
    t0 = anyio.current_time()

    async def worker() -> None:
        while anyio.current_time() - t0 < windows * period:
            await instant_call(limiter)
            starts.append(anyio.current_time())

    async with anyio.create_task_group() as group:
        for _ in range(8):
            group.start_soon(worker)
    inside = [s for s in starts if s - t0 < windows * period]
    assert len(inside) / (windows * period) >= 0.99 * calls / period
    assert max_in_any_window(starts, period) <= calls


async def test_pause_holds_back_every_waiter() -> None:
    limiter = RateLimiter(100, 60.0)
    await instant_call(limiter)
    t0 = anyio.current_time()
    limiter.pause(30.0)
    assert limiter.log.paused_until == t0 + 30.0
    starts = await run_acquirers(limiter, 5)
    assert all(s >= t0 + 30.0 for s in starts)
    assert limiter.stats.pauses == 1


async def test_pause_extends_but_never_shortens() -> None:
    limiter = RateLimiter(5, 60.0)
    t0 = anyio.current_time()
    limiter.pause(30.0)
    limiter.pause(5.0)
    assert limiter.log.paused_until == t0 + 30.0
    limiter.pause(45.0)
    assert limiter.log.paused_until == t0 + 45.0
    limiter.pause(-3.0)
    assert limiter.log.paused_until == t0 + 45.0


async def test_a_pause_arriving_while_waiting_is_honoured() -> None:
    limiter = RateLimiter(1, 10.0, margin=0.0)
    await instant_call(limiter)
    t0 = anyio.current_time()
    started: list[float] = []

    async def waiter() -> None:
        await instant_call(limiter)  # would return at t0 + 10 without the pause
        started.append(anyio.current_time())

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        await anyio.sleep(2.0)
        limiter.pause(20.0)
    assert started == [t0 + 22.0]


async def test_cancelled_holder_records_nothing_and_keeps_the_order() -> None:
    limiter = RateLimiter(1, 10.0, margin=0.0)
    t0 = anyio.current_time()
    await instant_call(limiter)
    done: dict[str, float] = {}

    async def named(name: str, scope: anyio.CancelScope) -> None:
        with scope:
            await instant_call(limiter)
            done[name] = anyio.current_time() - t0

    scopes = {name: anyio.CancelScope() for name in "bcde"}
    async with anyio.create_task_group() as group:
        for name, scope in scopes.items():
            group.start_soon(named, name, scope)
            await anyio.lowlevel.checkpoint()
        await anyio.sleep(1.0)
        scopes["b"].cancel()  # the head of the queue, asleep until t0 + 10
        scopes["d"].cancel()  # one in the middle of the queue
    assert done == {"c": 10.0, "e": 20.0}
    assert limiter.stats.calls == 3


async def test_stats_count_calls_waits_and_pauses() -> None:
    limiter = RateLimiter(2, 10.0, margin=0.0)
    await run_acquirers(limiter, 4)
    limiter.pause(5.0)
    await instant_call(limiter)
    stats = limiter.stats
    assert stats.calls == 5
    assert stats.pauses == 1
    # 10 s for the third call, none for the fourth, 10 for the fifth: the window of the
    # third call (t=10 -> 20) outlasts the pause (t=10 -> 15), so the pause costs nothing more
    assert stats.waited_s == pytest.approx(20.0)


async def test_seed_prevents_a_burst_after_a_restart() -> None:
    limiter = RateLimiter(10, 60.0, margin=0.0)
    wall_now = 1_700_000_000.0
    # the crashed run spent the whole budget in the 5 s before the restart
    limiter.seed([wall_now - 5.0 + 0.5 * i for i in range(10)], wall_now=wall_now)
    t0 = anyio.current_time()
    starts = await run_acquirers(limiter, 3)
    assert [round(s - t0, 6) for s in starts] == [55.0, 55.5, 56.0]


async def test_seed_keeps_the_latest_calls_and_forgives_old_ones() -> None:
    limiter = RateLimiter(2, 60.0, margin=0.0)
    wall_now = 1_700_000_000.0
    # old calls, a shuffled order, a future time (wall clock stepped back): the two most
    # recent count, the future one as "now"
    limiter.seed([wall_now - 500, wall_now + 30, wall_now - 400, wall_now - 20], wall_now=wall_now)
    t0 = anyio.current_time()
    starts = await run_acquirers(limiter, 2)
    assert [s - t0 for s in starts] == [40.0, 60.0]


async def test_seed_with_only_old_calls_does_not_wait() -> None:
    limiter = RateLimiter(3, 60.0)
    limiter.seed([100.0, 200.0, 300.0], wall_now=10_000.0)
    t0 = anyio.current_time()
    starts = await run_acquirers(limiter, 3)
    assert starts == [t0] * 3


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="calls"):
        RateLimiter(0, 60.0)
    with pytest.raises(ValueError, match="period"):
        RateLimiter(10, 0.0)
    with pytest.raises(ValueError, match="margin"):
        RateLimiter(10, 60.0, margin=-0.1)


def test_repr_names_the_budget() -> None:
    assert repr(RateLimiter(500, 60.0)) == (
        "RateLimiter(calls=500, period=60.0, window=60.030, clock=SystemClock())"
    )


# -- property: the budget holds for any pattern of arrivals and pauses ------------------

arrival_times = st.lists(st.floats(0.0, 50.0, allow_nan=False), min_size=1, max_size=30)
pause_events = st.lists(
    st.tuples(st.floats(0.0, 50.0, allow_nan=False), st.floats(0.0, 40.0, allow_nan=False)),
    max_size=3,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    calls=st.integers(1, 6),
    period=st.floats(0.05, 30.0, allow_nan=False),
    margin=st.sampled_from([0.0, 0.02, 0.2]),
    margin_s=st.sampled_from([0.0, 0.3]),
    arrivals=arrival_times,
    pauses=pause_events,
    seeded=st.lists(st.floats(0.0, 40.0, allow_nan=False), max_size=8),
)
async def test_never_more_than_n_starts_in_any_window(
    calls: int,
    period: float,
    margin: float,
    margin_s: float,
    arrivals: list[float],
    pauses: list[tuple[float, float]],
    seeded: list[float],
) -> None:
    limiter = RateLimiter(calls, period, margin=margin, margin_s=margin_s)
    wall_now = 1_000_000.0
    # a previous run's calls, `age` seconds before now: they count against the budget too
    limiter.seed([wall_now - age for age in seeded], wall_now=wall_now)
    t0 = anyio.current_time()
    previous = [t0 - (wall_now - (wall_now - age)) for age in seeded]  # as seed() rounds
    sequence = itertools.count()
    starts: list[tuple[int, float]] = []
    paused: list[tuple[int, float]] = []

    async def arrive(delay: float) -> None:
        await anyio.sleep(delay)
        await instant_call(limiter)
        starts.append((next(sequence), anyio.current_time()))

    async def pause(delay: float, seconds: float) -> None:
        await anyio.sleep(delay)
        paused.append((next(sequence), anyio.current_time() + seconds))
        limiter.pause(seconds)

    async with anyio.create_task_group() as group:
        for delay in arrivals:
            group.start_soon(arrive, delay)
        for delay, seconds in pauses:
            group.start_soon(pause, delay, seconds)

    assert len(starts) == len(arrivals)
    times = [t for _, t in starts]
    assert most_before(times, previous, period) <= calls
    assert most_before(times, previous, limiter.log.window) <= calls
    assert max_in_any_window(times, limiter.log.window) <= calls
    for pause_seq, until in paused:
        assert all(t >= until for seq, t in starts if seq > pause_seq)


@pytest.mark.parametrize(("calls", "period"), [(1, 1.0), (5, 0.5), (500, 60.0)])
async def test_a_full_log_blocks_exactly_until_the_oldest_start_leaves(
    calls: int, period: float
) -> None:
    limiter = RateLimiter(calls, period)
    t0 = anyio.current_time()
    starts = await run_acquirers(limiter, calls + 1)
    assert starts[:calls] == [t0] * calls
    assert starts[calls] == pytest.approx(t0 + period * (1 + DEFAULT_MARGIN))


async def test_an_injected_clock_is_the_one_slept_on() -> None:
    clock = RecordingClock()
    limiter = RateLimiter(1, 4.0, margin=0.0, clock=clock)
    await run_acquirers(limiter, 3)
    assert clock.sleeps == [4.0, 4.0]


def test_slow_down_keeps_the_newest_starts_and_never_reaches_zero() -> None:
    limiter = RateLimiter(10, 1.0, clock=_StillClock())
    limiter.seed([100.0 + i / 100 for i in range(10)], wall_now=100.1)
    log = limiter.log
    assert log.slow_down(0.5) == 5
    assert log.calls == 5 and len(log._given_back) == 5
    assert log.next_start() == pytest.approx(log._given_back[0] + log.window)
    for _ in range(10):
        log.slow_down(0.5)
    assert log.calls == 1
    with pytest.raises(ValueError):
        log.slow_down(0)


class _StillClock:
    def now(self) -> float:
        return 50.0

    async def sleep(self, seconds: float) -> None:  # pragma: no cover - not called
        raise AssertionError("no sleep expected")


# -- a slot is free one window after the answer, not after the start ------------------------


async def test_a_slot_frees_one_window_after_the_answer() -> None:
    limiter = RateLimiter(1, 10.0, margin=0.0)
    t0 = anyio.current_time()
    starts = await run_acquirers(limiter, 3, latency=3.0)
    # answered 3 s after each start: the next call waits 10 s from the answer, not the start
    assert [s - t0 for s in starts] == [0.0, 13.0, 26.0]


async def test_while_every_slot_is_held_the_next_call_waits_for_an_answer() -> None:
    limiter = RateLimiter(2, 1.0, margin=0.0)
    t0 = anyio.current_time()
    # calls slower than the window: the third may start only 1 s after the first answer
    starts = await run_acquirers(limiter, 3, latency=50.0)
    assert [s - t0 for s in starts] == [0.0, 0.0, 51.0]
    assert limiter.log.held == 0


async def test_a_failed_or_cancelled_call_gives_its_slot_back_when_given_up() -> None:
    limiter = RateLimiter(1, 10.0, margin=0.0)
    t0 = anyio.current_time()
    with pytest.raises(RuntimeError):
        async with limiter.slot():
            await anyio.sleep(2.0)
            raise RuntimeError("a bug")
    assert limiter.log.next_start() == t0 + 12.0
    await anyio.sleep(10.0)
    with anyio.move_on_after(3.0):  # a timeout: started at t0 + 12, given up at t0 + 15
        async with limiter.slot():
            await anyio.sleep(100.0)
    assert limiter.log.held == 0
    assert limiter.log.next_start() == t0 + 25.0


async def test_a_slot_is_given_back_once() -> None:
    limiter = RateLimiter(2, 10.0, margin=0.0)
    slot = await limiter.acquire()
    limiter.release(slot)
    limiter.release(slot)
    assert limiter.log.held == 0 and len(limiter.log._given_back) == 1


async def test_budget_use_at_a_5_s_window_and_20_ms_latency_is_at_least_98_percent() -> None:
    calls, period, windows, latency = 50, 5.0, 20, 0.02
    limiter = RateLimiter(calls, period)
    t0 = anyio.current_time()
    end = t0 + windows * period
    arrivals: list[float] = []

    async def worker() -> None:
        while anyio.current_time() < end:
            async with limiter.slot():
                arrivals.append(anyio.current_time() + latency / 2)
                await anyio.sleep(latency)

    async with anyio.create_task_group() as group:
        for _ in range(16):
            group.start_soon(worker)
    inside = [a for a in arrivals if a < end]
    assert len(inside) / (windows * calls) >= 0.98
    assert max_in_any_window(arrivals, period) <= calls


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    calls=st.integers(1, 5),
    period=st.floats(0.05, 10.0, allow_nan=False),
    requests=st.lists(
        st.tuples(
            st.floats(0.0, 20.0, allow_nan=False),  # when the caller asks for a slot
            st.floats(0.0, 15.0, allow_nan=False),  # how long until the answer
            st.floats(0.0, 1.0, allow_nan=False),  # where between start and answer it arrives
            st.booleans(),  # given up (timeout, cancellation) after half its latency
        ),
        min_size=1,
        max_size=25,
    ),
    seeded=st.lists(st.floats(0.0, 15.0, allow_nan=False), max_size=6),
)
async def test_no_window_holds_more_than_n_arrivals_whatever_the_delay(
    calls: int,
    period: float,
    requests: list[tuple[float, float, float, bool]],
    seeded: list[float],
) -> None:
    """The server counts each call somewhere between its start and its answer (or give-up)."""
    limiter = RateLimiter(calls, period, margin=0.0)
    wall_now = 1_000_000.0
    # a crashed run's calls, answered `age` s ago: they arrived at the latest then
    limiter.seed([wall_now - age for age in seeded], wall_now=wall_now)
    t0 = anyio.current_time()
    arrivals = [t0 - (wall_now - (wall_now - age)) for age in seeded]  # as seed() rounds

    async def call(delay: float, latency: float, where: float, given_up: bool) -> None:
        await anyio.sleep(delay)
        with anyio.CancelScope() as scope:
            async with limiter.slot():
                start = anyio.current_time()
                if given_up:  # cancelled inside the slot: the slot comes back under cancellation
                    scope.deadline = start + latency / 2
                try:
                    await anyio.sleep(latency)
                finally:
                    ended = anyio.current_time()
                    arrivals.append(start + where * (ended - start))

    async with anyio.create_task_group() as group:
        for request in requests:
            group.start_soon(call, *request)
    assert len(arrivals) == len(seeded) + len(requests)
    assert most_with_a_new_one(arrivals, len(seeded), period) <= calls


def most_with_a_new_one(arrivals: list[float], old: int, width: float) -> int:
    """The most ``arrivals`` in a ``[t, t + width)`` holding one past the first ``old``.

    Windows holding only the crashed run's calls are not checked: those were not placed here.
    """
    new = arrivals[old:]
    best = 0
    for start in arrivals:
        if any(start <= a < start + width for a in new):
            best = max(best, sum(start <= a < start + width for a in arrivals))
    return best
