"""The call stack, layer by layer, with a scripted fake client: stop -> circuit -> retry ->
limiter -> HTTP (counted). Nothing here sleeps on the wall clock: the limiter never holds a
call back and the one 429 pause runs on a fake clock."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from batchphone.errors import FatalRemoteError, RateLimitedError, RemoteError, TransientError
from batchphone.models import Reason
from batchphone.remote.calls import Calls, Circuit, SlowDown, open_calls
from batchphone.remote.ratelimit import RateLimiter
from batchphone.remote.retry import Attempted, RetryPolicy
from batchphone.remote.stop import Stop, Stopped
from tests.emulated import CallTimes, endpoint, make_emulator, phone_users, settings
from tests.virtual import SleptClock as FakeClock

pytestmark = pytest.mark.anyio


class Script:
    """A fake client: ``answer()`` returns the next scripted value or raises the next error."""

    def __init__(self, answers: Sequence[object]) -> None:
        self.answers = list(answers)
        self.sent = 0

    async def answer(self) -> object:
        self.sent += 1
        value = self.answers.pop(0)
        if isinstance(value, BaseException):
            raise value
        return value


def stack(script: Script, *, stop: Stop | None = None, **kwargs: Any) -> Calls:
    client: Any = script
    limiter = RateLimiter(1000, 1.0, clock=FakeClock())
    policy = RetryPolicy(max_attempts=3, wait_initial=0.5, wait_max=1.0, wait_jitter=0.0)
    return Calls(client, limiter, policy, stop=stop or Stop(), **kwargs)


async def send(calls: Calls, **kwargs: Any) -> Attempted[Any]:
    return await calls(lambda client: client.answer(), **kwargs)


def transient() -> TransientError:
    return TransientError("HTTP 503", http_status=503, error_code="E000503")


async def test_a_call_goes_through_every_layer_and_is_counted_once_per_http_call() -> None:
    script = Script([RateLimitedError("429", retry_after=2.0, http_status=429), transient(), "ok"])
    pauses: list[float] = []
    times = CallTimes()
    calls = stack(script, on_rate_limited=pauses.append, call_log=times)
    attempted = await send(calls)
    assert attempted.value == "ok"
    # the 429 cost no attempt (limiter layer); the 503 cost one (retry layer)
    assert (attempted.attempts, attempted.rate_limited) == (2, 1)
    assert (calls.count.calls, calls.count.rate_limited) == (3, 1)
    assert pauses == [2.0] and len(times.starts) == len(times.answers) == 3
    assert calls.limiter.clock.now() >= 2.0  # waited out the pause, on the fake clock


async def test_nothing_is_sent_once_the_run_is_stopping() -> None:
    stop = Stop()
    stop.request(Reason.INTERRUPTED)
    script = Script(["never"])
    calls = stack(script, stop=stop)
    with pytest.raises(Stopped):
        await send(calls)
    assert script.sent == 0 and calls.count.calls == 0


async def test_a_fatal_answer_stops_the_run_itself_and_propagates() -> None:
    stop = Stop()
    error = FatalRemoteError("HTTP 401", http_status=401)
    calls = stack(Script([error]), stop=stop)
    with pytest.raises(FatalRemoteError):
        await send(calls)
    assert stop.reason is Reason.UNAUTHORIZED and stop.fatal is error
    with pytest.raises(Stopped):  # and the next call does not start
        await send(calls)


async def test_the_circuit_counts_what_the_verdicts_say() -> None:
    stop = Stop()
    circuit = Circuit(stop, 0.5, min_calls=4)
    calls = stack(Script(["a", "b", "c"]), stop=stop, circuit=circuit)
    await send(calls)  # default: one success
    await send(calls, verdicts=lambda attempted: [None, None, "E1"])  # a batch of three
    await send(calls, verdicts=lambda attempted: [])  # a read that worked: not counted
    assert list(circuit._recent) == [False, False, False, True]
    assert stop.reason is None


async def test_calls_that_keep_failing_open_the_circuit() -> None:
    stop = Stop()
    circuit = Circuit(stop, 0.5, min_calls=4)
    failures: list[object] = [transient()] * 3 + [RemoteError("HTTP 400", http_status=400)]
    script = Script(["ok", *failures * 3])
    calls = stack(script, stop=stop, circuit=circuit)
    await send(calls)
    exhausted = await send(calls)  # three 503s: the retries are used up
    assert exhausted.error is not None and stop.reason is None  # 1 of 2: too few to judge
    with pytest.raises(RemoteError):  # a 4xx for the call as a whole
        await send(calls)
    assert stop.reason is None  # 2 of 3
    await send(calls)  # 3 of 4 failed: open
    assert stop.reason is Reason.CIRCUIT_OPEN
    assert stop.fatal is not None
    # what happened only: the summary's next step says what to do, once (the table shows
    # this message after "stopped: ")
    assert stop.fatal.message == "3 of the last 4 calls failed (last: E000503)"
    with pytest.raises(Stopped):
        await send(calls)


def test_the_circuit_opens_on_a_success_that_completes_its_minimum() -> None:
    stop = Stop()
    circuit = Circuit(stop, 0.5, min_calls=4)
    for failure in ("503", "503", "503", None):
        circuit.record(failure)
    assert stop.reason is Reason.CIRCUIT_OPEN


def test_the_circuit_leaves_a_fatal_stop_alone() -> None:
    stop = Stop()
    fatal = FatalRemoteError("HTTP 401", http_status=401)
    stop.request(Reason.UNAUTHORIZED, fatal=fatal)
    circuit = Circuit(stop, 0.1, min_calls=1)
    circuit.record("401")
    assert stop.fatal is fatal and stop.reason is Reason.UNAUTHORIZED


def test_slow_down_lowers_the_budget_once_per_block() -> None:
    clock = FakeClock()
    limiter = RateLimiter(100, 1.0, clock=clock)
    paused: list[float] = []

    class Progress:
        def paused(self, seconds: float, *, calls_per_second: float | None = None) -> None:
            paused.append(seconds)

    slow = SlowDown(limiter, Progress())  # type: ignore[arg-type]
    slow(30.0)
    clock.t = 29.0
    slow(30.0)  # one more answer from the same block
    assert limiter.log.calls == 90 and paused == [30.0]
    clock.t = 60.0  # the limiter's clock says the block is over: a 429 now is a new block
    slow(30.0)
    assert limiter.log.calls == 81 and paused == [30.0, 30.0]


async def test_open_calls_builds_the_runs_stack_over_the_emulator() -> None:
    emulator = make_emulator(phone_users(1))
    stop = Stop()
    calls = open_calls(settings(), endpoint(), emulator.transport(), stop=stop)
    try:
        attempted = await calls(lambda client: client.load_user("user0@example.com"))
    finally:
        await calls.aclose()
    assert attempted.value is not None and attempted.value.login_ids == ("user0@example.com",)
    assert calls.count.calls == 1 and calls.circuit is not None
