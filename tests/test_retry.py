"""call_with_retry with a scripted fake call (not HTTP) on virtual time, both backends."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from batchphone.errors import FatalRemoteError, RateLimitedError, TransientError
from batchphone.remote.calls import call_with_retry
from batchphone.remote.ratelimit import RateLimiter
from batchphone.remote.retry import Attempted, RetryPolicy
from tests.test_ratelimit import RecordingClock

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_time]

NO_JITTER = RetryPolicy(wait_initial=0.5, wait_max=30.0, wait_jitter=0.0)


class Script:
    """A fake call that answers with the next scripted value or raises the next error."""

    def __init__(self, answers: Sequence[object]) -> None:
        self.answers = list(answers)
        self.times: list[float] = []

    async def __call__(self) -> str:
        self.times.append(anyio.current_time())
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        assert isinstance(answer, str)
        return answer


def transient(status: int = 503) -> TransientError:
    return TransientError(f"HTTP {status}", http_status=status)


def limited(retry_after: float) -> RateLimitedError:
    return RateLimitedError("HTTP 429", retry_after=retry_after, http_status=429)


def roomy() -> RateLimiter:
    """A limiter that never holds a call back in these tests."""
    return RateLimiter(1000, 1.0)


def gaps(times: list[float]) -> list[float]:
    """Seconds between consecutive calls."""
    return [round(b - a, 9) for a, b in itertools.pairwise(times)]


async def test_a_first_success_is_one_attempt() -> None:
    script = Script(["ok"])
    result = await call_with_retry(script, limiter=roomy(), policy=NO_JITTER)
    assert result == Attempted(value="ok", error=None, attempts=1, rate_limited=0)


async def test_backoff_doubles_between_transient_failures() -> None:
    script = Script([transient(), transient(), transient(), transient(), "ok"])
    result = await call_with_retry(script, limiter=roomy(), policy=NO_JITTER)
    assert result.value == "ok"
    assert result.attempts == 5
    assert gaps(script.times) == [0.5, 1.0, 2.0, 4.0]


async def test_exhausted_attempts_return_the_last_error() -> None:
    last = transient(502)
    script = Script([transient(), transient(), last])
    policy = RetryPolicy(max_attempts=3, wait_jitter=0.0)
    result = await call_with_retry(script, limiter=roomy(), policy=policy)
    assert result.value is None
    assert result.error is last
    assert result.attempts == 3
    assert len(script.times) == 3


async def test_429s_pause_and_are_not_counted_as_attempts() -> None:
    script = Script([limited(7), limited(3), transient(), limited(2), "ok"])
    seen: list[float] = []
    limiter = roomy()
    result = await call_with_retry(
        script, limiter=limiter, policy=NO_JITTER, on_rate_limited=seen.append
    )
    assert result == Attempted(value="ok", error=None, attempts=2, rate_limited=3)
    assert seen == [7.0, 3.0, 2.0]
    # each resend waits for the pause (7, 3), then the backoff (0.5), then the pause (2)
    assert gaps(script.times) == [7.0, 3.0, 0.5, 2.0]
    assert limiter.stats.pauses == 3


async def test_a_429_never_makes_the_row_fail() -> None:
    script = Script([limited(1)] * 12 + ["ok"])
    policy = RetryPolicy(max_attempts=1)
    result = await call_with_retry(script, limiter=roomy(), policy=policy)
    assert result.value == "ok"
    assert (result.attempts, result.rate_limited) == (1, 12)


@pytest.mark.parametrize("retry_after", [0.0, -5.0])
async def test_an_unusable_retry_after_pauses_the_default(retry_after: float) -> None:
    script = Script([limited(retry_after), "ok"])
    policy = RetryPolicy(default_retry_after=45.0)
    seen: list[float] = []
    await call_with_retry(script, limiter=roomy(), policy=policy, on_rate_limited=seen.append)
    assert seen == [45.0]
    assert gaps(script.times) == [45.0]


async def test_a_pause_is_shared_by_every_caller_of_the_limiter() -> None:
    limiter = roomy()
    t0 = anyio.current_time()
    first = Script([limited(30), "ok"])
    others = [Script(["ok"]) for _ in range(4)]

    async def later(script: Script) -> None:
        await anyio.sleep(1.0)  # after the 429 came back
        await call_with_retry(script, limiter=limiter, policy=NO_JITTER)

    async with anyio.create_task_group() as group:
        group.start_soon(lambda: call_with_retry(first, limiter=limiter, policy=NO_JITTER))
        for script in others:
            group.start_soon(later, script)
    assert all(script.times[0] >= t0 + 30.0 for script in others)
    assert first.times == [t0, t0 + 30.0]


async def test_every_attempt_waits_for_the_limiter() -> None:
    limiter = RateLimiter(1, 10.0, margin=0.0)
    script = Script([transient(), transient(), "ok"])
    result = await call_with_retry(script, limiter=limiter, policy=NO_JITTER)
    assert result.attempts == 3
    assert gaps(script.times) == [10.0, 10.0]
    assert limiter.stats.calls == 3


class SlowScript(Script):
    """A scripted call whose answer takes ``latency`` seconds."""

    def __init__(self, answers: Sequence[object], latency: float) -> None:
        super().__init__(answers)
        self.latency = latency

    async def __call__(self) -> str:
        started = anyio.current_time()
        await anyio.sleep(self.latency)
        try:
            return await super().__call__()
        finally:
            self.times[-1] = started  # the start, not the answer


async def test_the_slot_is_held_until_the_answer_and_frees_one_window_later() -> None:
    limiter = RateLimiter(1, 10.0, margin=0.0)
    script = SlowScript([transient(), "ok"], latency=4.0)
    t0 = anyio.current_time()
    await call_with_retry(script, limiter=limiter, policy=NO_JITTER)
    # the first answer came at t0 + 4: the retry waits until t0 + 14, not t0 + 10
    assert [t - t0 for t in script.times] == [0.0, 14.0]
    assert limiter.log.held == 0 and limiter.log.next_start() == t0 + 28.0


@pytest.mark.parametrize("how", ["cancelled", "fatal"])
async def test_a_call_given_up_gives_its_slot_back_at_that_moment(how: str) -> None:
    limiter = RateLimiter(1, 10.0, margin=0.0)
    t0 = anyio.current_time()
    if how == "cancelled":
        with anyio.move_on_after(3.0):
            await call_with_retry(SlowScript(["ok"], 100.0), limiter=limiter, policy=NO_JITTER)
    else:
        error = FatalRemoteError("HTTP 401", http_status=401)
        with pytest.raises(FatalRemoteError):
            await call_with_retry(SlowScript([error], 3.0), limiter=limiter, policy=NO_JITTER)
    assert limiter.log.held == 0
    assert limiter.log.next_start() == t0 + 13.0


@pytest.mark.parametrize(
    "error", [FatalRemoteError("HTTP 401", http_status=401), ValueError("a bug")]
)
async def test_fatal_errors_and_bugs_propagate_at_once(error: Exception) -> None:
    script = Script([error, "never"])
    with pytest.raises(type(error)):
        await call_with_retry(script, limiter=roomy(), policy=NO_JITTER)
    assert len(script.times) == 1


async def test_cancellation_during_backoff_sends_nothing_more() -> None:
    script = Script([transient(), "never"])
    limiter = roomy()
    policy = RetryPolicy(wait_initial=5.0, wait_jitter=0.0)
    with anyio.move_on_after(2.0) as scope:
        await call_with_retry(script, limiter=limiter, policy=policy)
    assert scope.cancelled_caught
    assert len(script.times) == 1
    assert limiter.stats.calls == 1


async def test_cancellation_while_waiting_for_the_limiter_records_no_call() -> None:
    limiter = RateLimiter(1, 60.0, margin=0.0)
    limiter.release(await limiter.acquire())
    script = Script(["never"])
    with anyio.move_on_after(5.0):
        await call_with_retry(script, limiter=limiter, policy=NO_JITTER)
    assert script.times == []
    assert limiter.stats.calls == 1


async def test_backoff_sleeps_on_the_limiters_clock_by_default() -> None:
    clock = RecordingClock()
    limiter = RateLimiter(1000, 1.0, clock=clock)
    script = Script([transient(), transient(), "ok"])
    await call_with_retry(script, limiter=limiter, policy=NO_JITTER)
    assert clock.sleeps == [0.5, 1.0]


async def test_an_explicit_clock_wins() -> None:
    clock = RecordingClock()
    script = Script([transient(), "ok"])
    await call_with_retry(script, limiter=roomy(), policy=NO_JITTER, clock=clock)
    assert clock.sleeps == [0.5]


def test_backoff_is_capped_and_jittered_within_bounds() -> None:
    policy = RetryPolicy(wait_initial=0.5, wait_max=30.0, wait_jitter=1.0)
    rng = random.Random(7)
    for failures, base in [(1, 0.5), (2, 1.0), (4, 4.0), (7, 30.0), (500, 30.0)]:
        waits = [policy.backoff(failures, rng=rng) for _ in range(200)]
        assert all(base <= w <= base + 1.0 for w in waits)
        assert max(waits) - min(waits) > 0.5  # the jitter really spreads them
    assert NO_JITTER.backoff(3) == 2.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"wait_initial": -1.0},
        {"wait_jitter": -0.1},
        {"default_retry_after": 0},
    ],
)
def test_bad_policies_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)
