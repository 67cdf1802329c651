"""The stop token with call_with_retry on virtual time, both backends: after the first stop no
call starts, and waits for a slot, a 429 pause or a backoff end at once."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from batchphone.models import Reason
from batchphone.remote.calls import call_with_retry
from batchphone.remote.ratelimit import RateLimiter
from batchphone.remote.retry import RetryPolicy
from batchphone.remote.stop import Stop, Stopped
from tests.emulated import CallTimes
from tests.test_retry import Script, limited, transient

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_time]

POLICY = RetryPolicy(wait_initial=30.0, wait_max=30.0, wait_jitter=0.0)


async def stopped_after(
    seconds: float, stop: Stop, script: Script, limiter: RateLimiter, **kwargs: Any
) -> float:
    """Run the script under ``stop``, request the stop after ``seconds``; when it ended."""
    ended: list[float] = []

    async def call() -> None:
        with pytest.raises(Stopped):
            await call_with_retry(script, limiter=limiter, policy=POLICY, stop=stop, **kwargs)
        ended.append(anyio.current_time())

    start = anyio.current_time()
    async with anyio.create_task_group() as group:
        group.start_soon(call)
        await anyio.sleep(seconds)
        stop.request(Reason.INTERRUPTED)
    return ended[0] - start


async def test_a_wait_for_a_slot_ends_at_the_first_stop() -> None:
    limiter = RateLimiter(1, 60.0)
    await limiter.acquire()  # the window's one slot is spent: the next call waits ~61 s
    script = Script(["never"])
    took = await stopped_after(5.0, Stop(), script, limiter)
    assert took == pytest.approx(5.0)
    assert script.times == []


async def test_a_429_pause_ends_at_the_first_stop() -> None:
    script = Script([limited(60.0), "never"])
    took = await stopped_after(2.0, Stop(), script, RateLimiter(1000, 1.0))
    assert took == pytest.approx(2.0)
    assert len(script.times) == 1  # the 429; nothing after it


async def test_a_retry_backoff_ends_at_the_first_stop() -> None:
    script = Script([transient(), "never"])
    took = await stopped_after(1.0, Stop(), script, RateLimiter(1000, 1.0))
    assert took == pytest.approx(1.0)
    assert len(script.times) == 1


async def test_no_call_starts_once_stopped() -> None:
    stop = Stop()
    stop.request(Reason.UNAUTHORIZED)
    script = Script(["never"])
    with pytest.raises(Stopped) as caught:
        await call_with_retry(script, limiter=RateLimiter(1000, 1.0), policy=POLICY, stop=stop)
    assert caught.value.reason is Reason.UNAUTHORIZED and script.times == []


async def test_a_call_on_the_wire_finishes_after_a_soft_stop_and_a_hard_one_cancels_it() -> None:
    stop = Stop()
    answers: list[str] = []

    async def slow() -> str:
        await anyio.sleep(10.0)
        return "ok"

    async def one() -> None:
        attempted = await call_with_retry(
            slow, limiter=RateLimiter(1000, 1.0), policy=POLICY, stop=stop
        )
        assert attempted.value is not None
        answers.append(attempted.value)

    async with anyio.create_task_group() as group:
        group.start_soon(one)
        await anyio.sleep(1.0)
        assert stop.in_flight == 1
        stop.request(Reason.INTERRUPTED)  # first Ctrl-C: the call goes on
    assert answers == ["ok"] and stop.in_flight == 0

    hard = Stop()
    ended: list[float] = []

    async def cancelled() -> None:
        with pytest.raises(Stopped):
            await call_with_retry(slow, limiter=RateLimiter(1000, 1.0), policy=POLICY, stop=hard)
        ended.append(anyio.current_time())

    start = anyio.current_time()
    async with anyio.create_task_group() as group:
        group.start_soon(cancelled)
        await anyio.sleep(1.0)
        hard.request(Reason.INTERRUPTED)
        hard.request(Reason.INTERRUPTED, hard=True)  # second Ctrl-C
    assert ended[0] - start == pytest.approx(1.0)


async def test_every_answer_is_reported_with_the_time_it_arrived() -> None:
    times = CallTimes()
    script = Script([limited(0.5), transient(), "ok"])
    attempted = await call_with_retry(
        script,
        limiter=RateLimiter(1000, 1.0),
        policy=RetryPolicy(wait_initial=0.1, wait_jitter=0.0),
        stop=Stop(),
        call_log=times,
    )
    assert attempted.value == "ok"
    assert len(times.answers) == 3  # the 429, the 503 and the answer: every call counts
    assert times.answers == sorted(times.answers)
    # each start is recorded before its answer, and after the answer before it
    merged = [t for pair in zip(times.starts, times.answers, strict=True) for t in pair]
    assert merged == sorted(merged)
