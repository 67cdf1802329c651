"""``run --api batch``: 100 rows per patch call; failures mapped back, split, sent one by one."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchphone.emulator import load_users
from batchphone.errors import ResumeError, UsageError
from batchphone.models import Status, Summary, UpdateRequest
from batchphone.remote.answers import PatchAnswer
from batchphone.remote.batch import BatchSender, patch_body
from batchphone.remote.calls import Calls, Circuit
from batchphone.remote.ratelimit import RateLimiter
from batchphone.remote.retry import RetryPolicy
from batchphone.remote.stop import Stop
from tests.emulated import (
    PATCH_BATCH,
    PROJECT,
    SEARCH,
    UPDATE,
    Spy,
    by_row,
    calls,
    json_answer,
    make_emulator,
    new_phones,
    phone_users,
    read,
    run_job,
    write_input,
)

pytestmark = pytest.mark.anyio

BATCH = {"api": "batch"}


async def send(*args: Any, **kwargs: Any) -> Summary:
    """``run_job`` without the reads first: these tests are about how rows are sent."""
    kwargs.setdefault("no_lookup", True)
    return await run_job(*args, **kwargs)


async def test_batch_mode_ends_every_sample_row_as_per_row_mode_does(
    samples: Path, tmp_path: Path
) -> None:
    users = load_users(samples / "users.csv")
    per_row, batched = make_emulator(users), make_emulator(users)
    await send(per_row, "run", samples / "phones.csv", tmp_path / "rows.csv")
    spy = Spy(batched)
    await send(
        batched, "run", samples / "phones.csv", tmp_path / "batch.csv", transport=spy, job=BATCH
    )
    assert by_row(tmp_path / "batch.csv") == by_row(tmp_path / "rows.csv")
    for login_id in ("alice@example.com", "bob@example.com", "+14155550177", "zoe@example.com"):
        assert batched.user(PROJECT, login_id) == per_row.user(PROJECT, login_id)
    # the conflict was caught by the phone check; only the unknown user went per row
    assert [b["loginId"] for b in spy.bodies[UPDATE]] == ["nobody@example.com"]
    assert len(spy.bodies[PATCH_BATCH]) == 1  # the held duplicate joined the same batch
    rows = {int(r["row"]): r for r in read(tmp_path / "batch.csv")}
    assert json.loads(rows[1]["user"])["phone"] == "+14155550132"
    assert rows[1]["verified_phone"] == "true" and rows[2]["verified_phone"] == "false"


async def test_at_one_budget_a_batch_call_moves_at_least_50_times_the_rows(tmp_path: Path) -> None:
    """Rows per budgeted call: the budget, not the server, decides a run's speed."""
    rows = 1000
    per_row = make_emulator(phone_users(rows), rate_limit=100_000)
    batched = make_emulator(phone_users(rows), rate_limit=100_000)
    source = write_input(tmp_path / "in.csv", new_phones(rows), ["true"] * rows)
    await send(per_row, "run", source, tmp_path / "rows.csv")
    await send(batched, "run", source, tmp_path / "batch.csv", job=BATCH)
    assert by_row(tmp_path / "rows.csv") == by_row(tmp_path / "batch.csv")
    per_call_rows = rows / per_row.stats(PROJECT).calls
    batch_call_rows = rows / batched.stats(PROJECT).calls  # 1 phone check + 10 patches
    assert batched.stats(PROJECT).calls == 11
    assert batch_call_rows >= 50 * per_call_rows


@pytest.mark.parametrize(("size", "patches"), [(100, 3), (40, 7), (1, 250)])
async def test_batch_size_is_honoured(tmp_path: Path, size: int, patches: int) -> None:
    emulator = make_emulator(phone_users(250))
    source = write_input(tmp_path / "in.csv", new_phones(250), ["true"] * 250)
    spy = Spy(emulator)
    summary = await send(
        emulator,
        "run",
        source,
        tmp_path / "r.csv",
        transport=spy,
        job={**BATCH, "batch_size": size},
    )
    assert summary.counts == {"updated": 250}
    assert [len(b["users"]) for b in spy.bodies[PATCH_BATCH]].count(size) == 250 // size
    assert len(spy.bodies[PATCH_BATCH]) == patches == math.ceil(250 / size)
    assert calls(emulator, SEARCH) == 1 and calls(emulator, UPDATE) == 0


async def test_partial_failures_map_back_to_their_rows(tmp_path: Path) -> None:
    emulator = make_emulator(phone_users(6))
    rows = [*new_phones(3), ("ghost@example.com", "+14156669990"), *new_phones(6)[3:]]
    rows.append(("phantom@example.com", "+14156669991"))
    source = write_input(tmp_path / "in.csv", rows, ["true"] * len(rows))
    spy = Spy(emulator)
    out = tmp_path / "r.csv"
    summary = await send(emulator, "run", source, out, transport=spy, job=BATCH)
    got = by_row(out)
    assert got[4] == got[8] == ("not_found", "USER_NOT_FOUND")
    assert [got[i][0] for i in (1, 2, 3, 5, 6, 7)] == ["updated"] * 6
    assert len(spy.bodies[PATCH_BATCH]) == 1 and len(spy.bodies[PATCH_BATCH][0]["users"]) == 8
    # the failedUsers entries went through update/phone with failOnConflict, one by one
    resent = spy.bodies[UPDATE]
    assert [b["loginId"] for b in resent] == ["ghost@example.com", "phantom@example.com"]
    assert all(b["failOnConflict"] is True for b in resent)
    assert summary.exit_code == 1


async def test_a_batch_failing_as_a_whole_is_retried_then_split(tmp_path: Path) -> None:
    emulator = make_emulator(phone_users(100))

    async def too_big(request: httpx.Request) -> httpx.Response | None:
        if request.url.path == PATCH_BATCH and len(json.loads(request.content)["users"]) > 25:
            return json_answer(500, {"errorCode": "E000500", "errorMessage": "too big"})
        return None

    source = write_input(tmp_path / "in.csv", new_phones(100), ["true"] * 100)
    spy = Spy(emulator, too_big)
    summary = await send(
        emulator, "run", source, tmp_path / "r.csv", transport=spy, job=BATCH, max_attempts=2
    )
    assert summary.counts == {"updated": 100}
    sizes = [len(b["users"]) for b in spy.bodies[PATCH_BATCH]]
    # 2 attempts of 100; the halves once each (50, 50); their halves (25 x 4) go through
    assert sizes == [100, 100, 50, 25, 25, 50, 25, 25]
    assert calls(emulator, UPDATE) == 0


async def test_a_batch_that_keeps_failing_falls_back_to_per_row_calls(tmp_path: Path) -> None:
    emulator = make_emulator(phone_users(8))

    async def no_patch(request: httpx.Request) -> httpx.Response | None:
        if request.url.path == PATCH_BATCH:
            return json_answer(404, {"errorCode": "E000404", "errorMessage": "no such path"})
        return None

    source = write_input(tmp_path / "in.csv", new_phones(8), ["true"] * 8)
    spy = Spy(emulator, no_patch)
    summary = await send(emulator, "run", source, tmp_path / "r.csv", transport=spy, job=BATCH)
    assert summary.counts == {"updated": 8}
    # a 4xx is not retried: 8 -> 4 + 4 -> 2 + 2 + 2 + 2, then each row on its own
    assert [len(b["users"]) for b in spy.bodies[PATCH_BATCH]] == [8, 4, 2, 2, 4, 2, 2]
    assert sorted(b["loginId"] for b in spy.bodies[UPDATE]) == sorted(
        f"user{i}@example.com" for i in range(8)
    )


async def test_a_wrong_key_stops_a_batch_run_with_exit_3(tmp_path: Path) -> None:
    emulator = make_emulator(phone_users(10))

    async def revoked(request: httpx.Request) -> httpx.Response | None:
        if request.url.path == PATCH_BATCH:
            return httpx.Response(401, json={"errorCode": "E061103"})
        return None

    source = write_input(tmp_path / "in.csv", new_phones(10))
    out = tmp_path / "r.csv"
    summary = await send(emulator, "run", source, out, transport=Spy(emulator, revoked), job=BATCH)
    assert summary.exit_code == 3 and summary.counts == {"not_attempted": 10}
    assert {r["reason"] for r in read(out)} == {"UNAUTHORIZED"}
    assert calls(emulator, UPDATE) == 0


async def test_options_that_change_what_is_sent_guard_the_journal(tmp_path: Path) -> None:
    emulator = make_emulator(phone_users(4))
    source = write_input(tmp_path / "in.csv", new_phones(4))
    out = tmp_path / "r.csv"
    await send(emulator, "run", source, out, job={**BATCH, "batch_size": 2}, limit=2)
    with pytest.raises(ResumeError, match="option batch_size changed"):
        await send(emulator, "run", source, out, job={**BATCH, "batch_size": 3})
    with pytest.raises(ResumeError, match="option api changed"):
        await send(emulator, "run", source, out)
    summary = await send(emulator, "run", source, out, job={**BATCH, "batch_size": 2})
    assert summary.counts == {"updated": 4} and summary.resumed_rows == 2


async def test_batch_mode_refuses_allow_merge(tmp_path: Path) -> None:
    emulator = make_emulator(phone_users(1))
    source = write_input(tmp_path / "in.csv", new_phones(1))
    with pytest.raises(UsageError, match="allow_merge=True cannot be used with api=batch"):
        await send(emulator, "run", source, tmp_path / "r.csv", job=BATCH, allow_merge=True)
    assert calls(emulator) == 0


def test_the_patch_carries_the_verified_flag_update_phone_would_store() -> None:
    def body(phone: str, verified: bool | None) -> dict[str, Any]:
        return patch_body(UpdateRequest(row=1, login_id="a", phone=phone, verified=verified))

    assert body("+14155550100", True) == {
        "loginId": "a",
        "phone": "+14155550100",
        "verifiedPhone": True,
    }
    assert body("+14155550100", None)["verifiedPhone"] is False  # null is stored as false
    assert body("", True) == {"loginId": "a", "phone": "", "verifiedPhone": False}


async def test_patched_users_are_matched_by_any_login_id_or_user_id() -> None:
    requests = [
        UpdateRequest(row=1, login_id="a@example.com", phone="+14155550100", verified=True),
        UpdateRequest(row=2, login_id="U2", phone="+14155550101", verified=True),
        UpdateRequest(row=3, login_id="c@example.com", phone="+14155550102", verified=True),
    ]
    answer = {
        "patchedUsers": [
            {
                "loginIds": ["x@example.com", "a@example.com"],
                "userId": "U1",
                "phone": "+14155550100",
            },
            {"loginIds": ["b@example.com"], "userId": "U2", "phone": "+14155550101"},
        ],
        "failedUsers": [{"failure": "boom", "user": {"loginIds": ["c@example.com"]}}],
    }

    class Client:
        async def patch_batch(self, users: list[dict[str, Any]]) -> PatchAnswer:
            return PatchAnswer.from_api(answer)

    stop = Stop()
    circuit = Circuit(stop, 0.5, min_calls=1)
    client: Any = Client()
    stack = Calls(client, RateLimiter(100, 1.0), RetryPolicy(), stop=stop, circuit=circuit)
    batched = await BatchSender(stack).send(requests)
    assert [(r.row, r.status, r.user_id) for r in batched.settled] == [
        (1, Status.UPDATED, "U1"),
        (2, Status.UPDATED, "U2"),
    ]
    # row 3 is handed back to be sent on its own: the batch sends nothing row by row
    assert [r.row for r in batched.resend] == [3]
    assert all(r.attempts == 1 for r in batched.settled)
    assert list(circuit._recent) == [False, False]  # one outcome per settled row
    assert stack.count.calls == 1
