"""Batched user reads: 100 ids per search, paced by the limiter, 429s and failures handled."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from batchphone.config import Secret
from batchphone.errors import FatalRemoteError
from batchphone.models import Reason
from batchphone.remote.calls import Calls
from batchphone.remote.client import DescopeClient
from batchphone.remote.lookup import PAGE, Lookup, LookupFailed
from batchphone.remote.ratelimit import RateLimiter
from batchphone.remote.retry import RetryPolicy
from batchphone.remote.stop import Stop
from tests.emulated import (
    KEY,
    LOAD,
    PROJECT,
    SEARCH,
    UPDATE,
    Spy,
    json_answer,
    make_emulator,
    new_phones,
    phone_users,
    read,
    run_job,
    write_input,
)
from tests.virtual import SleptClock as FakeClock

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def lookup_over(
    transport: httpx.AsyncBaseTransport, *, max_attempts: int = 3, **kwargs: Any
) -> AsyncIterator[Lookup]:
    client = DescopeClient(
        project_id=PROJECT,
        management_key=Secret(KEY),
        base_url="http://emulator.invalid",
        transport=transport,
    )
    limiter = RateLimiter(1000, 1.0, clock=FakeClock())
    policy = RetryPolicy(max_attempts=max_attempts, wait_initial=0.5, wait_max=1.0, wait_jitter=0)
    calls = Calls(client, limiter, policy, **kwargs)
    try:
        yield Lookup(calls)
    finally:
        await calls.aclose()


async def test_one_search_per_hundred_ids_each_through_the_limiter() -> None:
    emulator = make_emulator(phone_users(230))
    spy = Spy(emulator)
    ids = [f"user{i}@example.com" for i in range(250)]  # the last 20 do not exist
    async with lookup_over(spy) as lookup:
        found = await lookup.by_login_id([*ids, ids[0]])  # a repeated id is asked once
        assert lookup.answered == 3 and lookup.calls.limiter.stats.calls == 3
    assert [len(body["loginIds"]) for body in spy.bodies[SEARCH]] == [100, 100, 50]
    assert all(body["limit"] == PAGE and body["withTestUser"] for body in spy.bodies[SEARCH])
    assert set(found) == set(ids[:230])
    assert found["user7@example.com"].phone == "+14155550007"


async def test_a_user_is_found_under_each_login_id_asked_for() -> None:
    emulator = make_emulator([{"loginIds": ["a@example.com", "+14155550100"], "phone": ""}])
    async with lookup_over(emulator.transport()) as lookup:
        found = await lookup.by_login_id(["+14155550100", "b@example.com"])
    assert list(found) == ["+14155550100"]
    assert found["+14155550100"].login_ids == ("a@example.com", "+14155550100")


async def test_a_429_pauses_the_limiter_and_the_search_is_sent_again() -> None:
    emulator = make_emulator(phone_users(3))
    answered = 0

    async def first_is_429(request: httpx.Request) -> httpx.Response | None:
        nonlocal answered
        answered += 1
        if answered == 1:
            body = {"errorCode": "E130429", "errorMessage": "rate limited"}
            return httpx.Response(429, json=body, headers={"Retry-After": "7"})
        return None

    pauses: list[float] = []
    spy = Spy(emulator, first_is_429)
    async with lookup_over(spy, on_rate_limited=pauses.append) as lookup:
        found = await lookup.by_login_id(["user1@example.com"])
        assert lookup.calls.count.rate_limited == 1 and pauses == [7.0]
        assert lookup.calls.limiter.stats.pauses == 1
        assert lookup.calls.limiter.clock.now() >= 7.0  # waited out the pause (on the fake clock)
    assert list(found) == ["user1@example.com"]


async def test_retries_exhausted_fail_the_rows_of_that_search() -> None:
    emulator = make_emulator(phone_users(3))

    async def unavailable(request: httpx.Request) -> httpx.Response | None:
        return json_answer(503, {"errorCode": "E000503", "errorMessage": "unavailable"})

    async with lookup_over(Spy(emulator, unavailable), max_attempts=3) as lookup:
        with pytest.raises(LookupFailed) as caught:
            await lookup.by_login_id(["user1@example.com"])
        assert lookup.answered == 0 and lookup.calls.limiter.stats.calls == 3
    failure = caught.value.failure
    assert failure is not None and failure.reason is Reason.RETRIES_EXHAUSTED
    assert failure.attempts == 3 and failure.http_status == 503
    assert failure.error_message.startswith("lookup failed: search users: HTTP 503")


async def test_a_4xx_is_not_retried() -> None:
    emulator = make_emulator([])

    async def bad_request(request: httpx.Request) -> httpx.Response | None:
        return json_answer(400, {"errorCode": "E011004", "errorMessage": "limit too large"})

    spy = Spy(emulator, bad_request)
    async with lookup_over(spy) as lookup:
        with pytest.raises(LookupFailed) as caught:
            await lookup.by_login_id(["x@example.com"])
    assert len(spy.bodies[SEARCH]) == 1
    failure = caught.value.failure
    assert failure is not None and failure.reason is Reason.REJECTED
    assert failure.error_code == "E011004"


async def test_a_wrong_key_is_fatal() -> None:
    emulator = make_emulator(phone_users(1))
    client = DescopeClient(
        project_id=PROJECT,
        management_key=Secret("K2-not-the-key"),
        base_url="http://emulator.invalid",
        transport=emulator.transport(),
    )
    stop = Stop()
    calls = Calls(client, RateLimiter(10, 1.0, clock=FakeClock()), RetryPolicy(), stop=stop)
    with pytest.raises(FatalRemoteError):
        await Lookup(calls).by_login_id(["user0@example.com"])
    await calls.aclose()
    # the stack stopped the run itself: no callback up to the caller
    assert stop.reason is Reason.UNAUTHORIZED and stop.fatal is not None


def _unfiltered(
    users: list[dict[str, Any]], total: int, searches: list[int]
) -> httpx.MockTransport:
    """A server that pages through ``users`` whatever the filter asks, claiming ``total``.

    After 30 searches it answers an empty page, so that a client paging on and on ends.
    """

    def handler(request: httpx.Request) -> httpx.Response:
        searches.append(json.loads(request.content)["page"])
        page = searches[-1] if len(searches) <= 30 else 10**6
        return httpx.Response(
            200, json={"users": users[page * 100 : (page + 1) * 100], "total": total}
        )

    return httpx.MockTransport(handler)


@pytest.mark.parametrize(
    ("users", "total", "sign"),
    [
        # the 100 users asked for, then 50 more: a total larger than the ids asked
        ([{"loginIds": [f"u{i}"]} for i in range(150)], 150, "a total of 150 users for 100"),
        # full pages of the same users, page after page, of a project of a million
        ([{"loginIds": [f"u{i}"]} for i in range(100)] * 3, 10**6, "a total of 1000000 users"),
        # users none of whose login ids were asked for
        ([{"loginIds": [f"v{i}"]} for i in range(100)], 100, "100 users with none of the login"),
    ],
)
async def test_a_server_that_ignores_the_filter_stops_the_run(
    users: list[dict[str, Any]], total: int, sign: str
) -> None:
    """100 ids name at most 100 users: one page. More than that is no answer to the search."""
    searches: list[int] = []
    stop = Stop()
    async with lookup_over(_unfiltered(users, total, searches), stop=stop) as lookup:
        with pytest.raises(FatalRemoteError) as caught:
            await lookup.by_login_id([f"u{i}" for i in range(100)])
    assert searches == [0]
    assert caught.value.exit_code == 3 and sign in caught.value.message
    assert caught.value.message.startswith("search users: the server ignored the login id filter")
    assert stop.reason is Reason.STOPPED and stop.fatal is caught.value
    # a user found under another case of the id asked for is the one asked for: no stop
    async with lookup_over(_unfiltered([{"loginIds": ["U0"]}], 1, [])) as lookup:
        assert list(await lookup.by_login_id(["u0"])) == []


async def test_a_run_against_a_server_that_ignores_the_filter_exits_3(tmp_path: Path) -> None:
    emulator = make_emulator(phone_users(300))
    strangers = [{"loginIds": [f"other{i}@example.com"]} for i in range(100)]

    async def everyone(request: httpx.Request) -> httpx.Response | None:
        if request.url.path == SEARCH:  # a full page of users nobody asked for, and more
            return json_answer(200, {"users": strangers, "total": 5000})
        return None

    spy = Spy(emulator, everyone)
    source = write_input(tmp_path / "in.csv", new_phones(150))
    summary = await run_job(emulator, "run", source, tmp_path / "r.csv", transport=spy)
    assert summary.exit_code == 3
    assert summary.stopped_reason is not None
    assert summary.stopped_reason.startswith("search users: the server ignored the login id")
    assert "\n" not in summary.stopped_reason
    assert len(spy.bodies[SEARCH]) == 1 and UPDATE not in spy.bodies
    assert {row["status"] for row in read(tmp_path / "r.csv")} == {"not_attempted"}


async def test_owners_of_1000_phones_cost_one_search_per_page_of_answers() -> None:
    # 150 of the 1200 phones are login ids (phone-login users): 2 pages, then 1 page
    users = [{"loginId": f"+1415555{i:04d}"} for i in range(150)]
    emulator = make_emulator(users)
    spy = Spy(emulator)
    phones = [f"+1415555{i:04d}" for i in range(1200)]
    async with lookup_over(spy) as lookup:
        found = await lookup.owners(phones)
        assert lookup.answered == 3
    assert [(len(b["loginIds"]), b["page"]) for b in spy.bodies[SEARCH]] == [
        (1000, 0),
        (1000, 1),
        (200, 0),
    ]
    assert set(found) == set(phones[:150])


async def test_a_server_refusing_long_filters_gets_100_ids_at_a_time() -> None:
    emulator = make_emulator([{"loginId": "+14155551199"}])

    async def at_most_100(request: httpx.Request) -> httpx.Response | None:
        if request.url.path == SEARCH and len(json.loads(request.content)["loginIds"]) > 100:
            return json_answer(400, {"errorCode": "E011004", "errorMessage": "too many"})
        return None

    spy = Spy(emulator, at_most_100)
    phones = [f"+1415555{i:04d}" for i in range(1200)]
    async with lookup_over(spy) as lookup:
        found = await lookup.owners(phones)
        assert list(await lookup.owners(phones[:150])) == []  # remembered: no long try again
    assert [len(b["loginIds"]) for b in spy.bodies[SEARCH]] == [1000] + [100] * 12 + [100, 50]
    assert list(found) == ["+14155551199"]


async def test_read_back_returns_the_user_or_none() -> None:
    emulator = make_emulator(phone_users(2))
    spy = Spy(emulator)
    async with lookup_over(spy) as lookup:
        user = await lookup.read_back("user1@example.com")
        missing = await lookup.read_back("nobody@example.com")
        assert lookup.answered == 2 and lookup.calls.limiter.stats.calls == 2
    assert user is not None and user.phone == "+14155550001"
    assert missing is None
    assert spy.bodies[LOAD] == [{"loginId": "user1@example.com"}, {"loginId": "nobody@example.com"}]


async def test_a_cancelled_read_leaves_its_rows_unjudged() -> None:
    """A hard stop (a second Ctrl-C) cancels the calls on the wire: reads included."""
    emulator = make_emulator(phone_users(1))
    started = anyio.Event()

    async def hang(request: httpx.Request) -> httpx.Response | None:
        started.set()
        await anyio.sleep_forever()
        return None

    stop = Stop()
    outcome: list[LookupFailed] = []
    async with lookup_over(Spy(emulator, hang), stop=stop) as lookup:

        async def read() -> None:
            try:
                await lookup.by_login_id(["user0@example.com"])
            except LookupFailed as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as group:
            group.start_soon(read)
            await started.wait()
            assert stop.in_flight == 1
            stop.request(Reason.INTERRUPTED, hard=True)
    assert len(outcome) == 1 and outcome[0].failure is None
    assert stop.in_flight == 0
