"""Sending rows: the pool's process functions over the call stack and the in-process emulator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from batchphone.models import Reason, Status, UpdateRequest
from batchphone.remote.batch import BatchSender
from batchphone.remote.calls import Calls, open_calls
from batchphone.remote.send import RowSender, fetch_license
from batchphone.remote.stop import Stop
from tests.emulated import (
    KEY,
    LICENSE,
    PATCH_BATCH,
    UPDATE,
    Spy,
    endpoint,
    json_answer,
    make_emulator,
    phone_users,
    settings,
)

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def stack_over(
    transport: httpx.AsyncBaseTransport, stop: Stop, key: str = KEY, **overrides: Any
) -> AsyncIterator[Calls]:
    calls = open_calls(settings(**overrides), endpoint(key), transport, stop=stop)
    try:
        yield calls
    finally:
        await calls.aclose()


def request(row: int, login_id: str) -> UpdateRequest:
    return UpdateRequest(row=row, login_id=login_id, phone=f"+1415666{row:04d}", verified=True)


async def test_a_row_is_updated_through_the_stack() -> None:
    emulator = make_emulator(phone_users(1))
    async with stack_over(emulator.transport(), Stop()) as calls:
        result = await RowSender(calls).process(request(1, "user0@example.com"))
        assert calls.count.calls == 1
    assert (result.status, result.attempts) == (Status.UPDATED, 1)
    assert result.user_id is not None and result.user_json is not None


async def test_a_wrong_key_ends_the_row_unsent_and_stops_the_run() -> None:
    emulator = make_emulator(phone_users(2))
    stop = Stop()
    async with stack_over(emulator.transport(), stop, key="K2-not-the-key") as calls:
        sender = RowSender(calls)
        first = await sender.process(request(1, "user0@example.com"))
        second = await sender.process(request(2, "user1@example.com"))
        assert calls.count.calls == 1  # the second row was never sent
    assert (first.status, first.reason, first.http_status) == (
        Status.NOT_ATTEMPTED,
        Reason.UNAUTHORIZED,
        401,
    )
    assert (second.status, second.reason) == (Status.NOT_ATTEMPTED, Reason.UNAUTHORIZED)
    assert stop.fatal is not None and stop.fatal.exit_code == 3


async def test_the_license_handshake_goes_through_the_stack_and_a_401_stops_the_run() -> None:
    emulator = make_emulator([])
    stop = Stop()
    spy = Spy(emulator)
    async with stack_over(spy, stop, key="K2-not-the-key") as calls:
        await fetch_license(calls)  # returns: the stop says what happened
        assert calls.count.calls == 1
    assert len(spy.bodies[LICENSE]) == 1
    assert stop.reason is Reason.UNAUTHORIZED


async def test_rows_a_batch_hands_back_are_sent_one_by_one_in_order() -> None:
    emulator = make_emulator(phone_users(3))

    async def drop_second(request: httpx.Request) -> httpx.Response | None:
        if request.url.path == PATCH_BATCH:  # the answer leaves row 2 out: neither list
            answer = await emulator.transport().handle_async_request(request)
            await answer.aread()
            body = answer.json()
            body["patchedUsers"] = [
                u for u in body["patchedUsers"] if "user1@example.com" not in u["loginIds"]
            ]
            return json_answer(200, body)
        return None

    spy = Spy(emulator, drop_second)
    async with stack_over(spy, Stop()) as calls:
        sender = RowSender(calls, BatchSender(calls))
        requests = [request(i + 1, f"user{i}@example.com") for i in range(3)]
        results = await sender.process_batch(requests)
        assert calls.count.calls == 2
    assert [(r.row, r.status) for r in results] == [(i, Status.UPDATED) for i in (1, 2, 3)]
    assert [b["loginId"] for b in spy.bodies[UPDATE]] == ["user1@example.com"]
