"""Rows on their way to the workers: one per call or in batches, each pending until it is back."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from batchphone.models import RowResult, Status, UpdateRequest
from batchphone.modes.dispatch import Dispatch, Pending

pytestmark = pytest.mark.anyio


def request(row: int) -> UpdateRequest:
    return UpdateRequest(row=row, login_id=f"u{row}@x.com", phone="+14155550100", verified=None)


def result(row: int, status: Status = Status.UPDATED) -> RowResult:
    return RowResult(row, f"u{row}@x.com", "x", "+14155550100", status)


async def sent(dispatch: Dispatch, rows: list[int], *, flush: bool) -> list[Any]:
    send, receive = anyio.create_memory_object_stream[Any](100)
    for row in rows:
        await dispatch.send(request(row), send)
    if flush:
        await dispatch.flush(send)
    send.close()
    return [item async for item in receive]


async def test_one_request_per_call() -> None:
    pending = Pending()
    items = await sent(Dispatch(pending, None), [1, 2], flush=True)
    assert [item.row for item in items] == [1, 2]
    assert sorted(pending.sent) == [1, 2]


async def test_batches_fill_then_the_rest_on_flush() -> None:
    dispatch = Dispatch(Pending(), 2)
    assert [[r.row for r in batch] for batch in await sent(dispatch, [1, 2, 3], flush=False)] == [
        [1, 2]
    ]
    assert [[r.row for r in batch] for batch in await sent(dispatch, [], flush=True)] == [[3]]
    assert await sent(dispatch, [], flush=True) == []  # nothing left: nothing sent


async def test_unsettled_rows_wait_for_the_settle_rounds() -> None:
    pending = Pending()
    pending.add([request(1), request(2)])
    pending.done(result(1, Status.UNSETTLED))
    pending.done(result(2))
    await pending.drained()
    assert [r.row for r in pending.take_unsettled()] == [1]
    assert pending.take_unsettled() == []
