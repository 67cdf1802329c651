"""The emulator's budget: both window algorithms, the block, Retry-After, and isolation."""

from __future__ import annotations

import math

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchphone.emulator import Emulator, ProjectSettings
from batchphone.emulator.ratelimit import RateLimiter, retry_after_header

pytestmark = pytest.mark.anyio

LOAD = "/v1/mgmt/user"
USERS = [{"loginId": "a@example.com", "phone": "+14155550100"}, {"loginId": "b@example.com"}]


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def project(pid: str, key: str, **budget: object) -> ProjectSettings:
    return ProjectSettings(pid, key, users=USERS, **budget)  # type: ignore[arg-type]


def client(emu: Emulator, pid: str, key: str) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {pid}:{key}"}
    return httpx.AsyncClient(transport=emu.transport(), base_url="http://e", headers=headers)


# -- the limiter itself ---------------------------------------------------------------------------


def test_sliding_admits_n_then_blocks_for_the_penalty() -> None:
    limiter = RateLimiter(3, 10.0, 5.0, "sliding")
    assert [limiter.admit(t) for t in (0.0, 1.0, 2.0)] == [None, None, None]
    assert limiter.admit(3.0) == 5.0  # the call that exceeds starts the block
    assert limiter.admit(6.5) == pytest.approx(1.5)  # still blocked, the block is not extended
    # the block is over, but the window (6.5 - 10, 8.0] still holds 4 calls: blocked again
    assert limiter.admit(8.0) == 5.0
    assert (limiter.blocks, limiter.rejected, limiter.calls) == (2, 3, 6)


def test_a_call_exactly_w_seconds_old_no_longer_counts() -> None:
    limiter = RateLimiter(2, 10.0, 0.0, "sliding")
    assert limiter.admit(0.0) is None and limiter.admit(5.0) is None
    assert limiter.admit(10.0) is None  # the call at 0.0 left the window (0, 10]
    assert limiter.admit(10.5) is not None


def test_fixed_windows_allow_a_burst_across_their_edge_that_sliding_refuses() -> None:
    times = [9.0, 9.5, 10.0, 10.5]  # 2 at the end of [0, 10), 2 at the start of [10, 20)
    fixed = RateLimiter(2, 10.0, 60.0, "fixed", origin=0.0)
    sliding = RateLimiter(2, 10.0, 60.0, "sliding")
    assert [fixed.admit(t) for t in times] == [None] * 4
    assert [sliding.admit(t) is None for t in times] == [True, True, False, False]
    assert fixed.max_window == 4  # what was seen, whatever the algorithm allowed


def test_calls_during_a_block_count_and_hammering_prolongs_it() -> None:
    limiter = RateLimiter(2, 1.0, 1.0, "sliding")
    for t in (0.0, 0.1, 0.2):
        limiter.admit(t)
    for t in (0.5, 0.7, 0.9, 1.1):  # a client that ignores Retry-After
        assert limiter.admit(t) is not None
    assert limiter.admit(1.25) is not None  # block over, but the window is full of its calls
    assert limiter.blocks == 2


def test_block_and_retry_after_header() -> None:
    limiter = RateLimiter(10, 60.0, 60.0)
    limiter.block(100.0, 7.0)
    assert limiter.admit(100.2) == pytest.approx(6.8)
    assert [retry_after_header(s) for s in (59.2, 60.0, 0.01, 0.0)] == ["60", "60", "1", "1"]
    with pytest.raises(ValueError):
        limiter.block(100.0, 0)
    with pytest.raises(ValueError):
        RateLimiter(0, 60.0, 60.0)


def brute_max_window(times: list[float], window: float) -> int:
    return max((sum(1 for u in times if t - window < u <= t) for t in times), default=0)


call_times = st.lists(st.integers(0, 400), max_size=60).map(lambda xs: sorted(x / 10 for x in xs))


@settings(max_examples=200, deadline=None)
@given(times=call_times, limit=st.integers(1, 6), origin=st.integers(-50, 50))
def test_a_sliding_safe_schedule_is_fixed_safe(times: list[float], limit: int, origin: int) -> None:
    sliding = RateLimiter(limit, 5.0, 5.0, "sliding")
    fixed = RateLimiter(limit, 5.0, 5.0, "fixed", origin=origin / 10)
    sliding_ok = all([sliding.admit(t) is None for t in times])  # a list: count every call
    fixed_ok = all([fixed.admit(t) is None for t in times])
    assert fixed_ok or not sliding_ok
    assert sliding.max_window == fixed.max_window == brute_max_window(times, 5.0)
    # the limiter says yes exactly when every window holds at most N calls
    assert sliding_ok == (brute_max_window(times, 5.0) <= limit)


# -- over HTTP ------------------------------------------------------------------------------------


async def test_429_body_retry_after_and_the_end_of_the_block() -> None:
    clock = FakeClock()
    emu = Emulator([project("P1", "K1", rate_limit=3, rate_window=10.0, penalty=5.0)], clock=clock)
    async with client(emu, "P1", "K1") as c:
        for _ in range(3):
            assert (await c.get(LOAD, params={"loginId": "a@example.com"})).status_code == 200
        first = await c.get(LOAD, params={"loginId": "a@example.com"})
        assert first.status_code == 429
        assert first.headers["Retry-After"] == "5"
        assert first.json()["errorCode"] == "E130429"
        clock.now += 2.5
        second = await c.get(LOAD, params={"loginId": "a@example.com"})
        assert (second.status_code, second.headers["Retry-After"]) == (429, "3")
        # the license handshake is not a user call: it is not counted and never refused
        assert (await c.get("/v1/mgmt/license")).status_code == 200
        clock.now += 10.0  # block over and the window empty again
        assert (await c.get(LOAD, params={"loginId": "a@example.com"})).status_code == 200
    stats = emu.stats("P1")
    assert (stats.rate_limited, stats.blocks, stats.max_window_calls) == (2, 1, 5)
    assert stats.requests[(LOAD, 429)] == 2


@pytest.mark.parametrize("algorithm", ["sliding", "fixed"])
async def test_scaled_time_keeps_the_semantics(algorithm: str) -> None:
    clock = FakeClock(0.0)
    budget = {"rate_limit": 50, "rate_window": 1.0, "penalty": 1.0, "algorithm": algorithm}
    emu = Emulator([project("P1", "K1", **budget)], clock=clock)
    async with client(emu, "P1", "K1") as c:
        statuses = []
        for i in range(51):
            clock.now = i * 0.01
            statuses.append((await c.get(LOAD, params={"loginId": "a@example.com"})).status_code)
        assert statuses == [200] * 50 + [429]
        clock.now = 0.5 + 1.0 + 1e-6  # 1 s block from 0.5, and the window has moved past it
        assert (await c.get(LOAD, params={"loginId": "a@example.com"})).status_code == 200


async def test_emu_block_starts_a_block_now() -> None:
    clock = FakeClock()
    emu = Emulator([project("P1", "K1")], clock=clock)
    emu.block("P1", 42.0)
    async with client(emu, "P1", "K1") as c:
        response = await c.post(
            "/v1/mgmt/user/update/phone", json={"loginId": "a@example.com", "phone": "+14155550101"}
        )
    assert (response.status_code, response.headers["Retry-After"]) == (429, "42")
    assert emu.user("P1", "a@example.com")["phone"] == "+14155550100"  # type: ignore[index]
    assert emu.stats("P1").blocks == 1


async def test_projects_have_their_own_users_keys_and_budgets() -> None:
    clock = FakeClock()
    other_users = [{"loginId": "z@example.com"}]
    emu = Emulator(
        [
            project("P1", "K1", rate_limit=1, rate_window=60.0, penalty=60.0),
            ProjectSettings("P2", "K2", rate_limit=2, users=other_users, license_tier="tier4"),
        ],
        clock=clock,
    )
    async with client(emu, "P1", "K1") as one, client(emu, "P2", "K2") as two:
        assert (await one.get(LOAD, params={"loginId": "a@example.com"})).status_code == 200
        assert (await one.get(LOAD, params={"loginId": "a@example.com"})).status_code == 429
        # P1 is blocked; P2 is not, and does not know P1's users
        assert (await two.get(LOAD, params={"loginId": "z@example.com"})).status_code == 200
        emu.block("P2", 1.0)
        clock.now += 2.0
        assert (await two.get(LOAD, params={"loginId": "a@example.com"})).status_code == 404
        assert (await two.get("/v1/mgmt/license")).json() == {"rateLimitTier": "tier4"}
    async with client(emu, "P2", "K1") as crossed:
        assert (await crossed.get("/v1/mgmt/license")).status_code == 401
    assert emu.stats("P1").calls == 2 and emu.stats("P2").calls == 2
    assert emu.stats("P1").rate_limited == 1 and emu.stats("P2").rate_limited == 0


def test_max_window_matches_a_brute_force_count() -> None:
    limiter = RateLimiter(1000, 1.0, 1.0)
    times = [i * 0.3 for i in range(10)] + [3.0, 3.05, 3.1, 3.2]
    for t in times:
        limiter.admit(t)
    assert limiter.max_window == brute_max_window(times, 1.0) == 6
    assert math.isinf(RateLimiter(1, 1.0, 1.0).blocked_until)


def test_the_clock_is_not_read_before_the_first_call() -> None:
    def unreadable() -> float:  # like anyio.current_time outside an event loop
        raise RuntimeError("no event loop")

    emu = Emulator([project("P1", "K1", algorithm="fixed")], clock=unreadable)
    assert emu.stats("P1").calls == 0
