"""Read before write, the default of every run: read users 100 per call, send only the rows
that change. ``--no-lookup`` sends every row unread."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs

from batchphone.errors import ResumeError
from batchphone.models import LOOKUP_COLUMNS, RESULT_COLUMNS
from tests.emulated import (
    LICENSE,
    PATCH_BATCH,
    PROJECT,
    SEARCH,
    UPDATE,
    Spy,
    by_row,
    calls,
    json_answer,
    make_emulator,
    phone_users,
    read,
    run_job,
    write_input,
)
from tests.virtual import VirtualClock

pytestmark = pytest.mark.anyio


def sync_rows(count: int, changed: set[int]) -> list[tuple[str, str]]:
    """The nightly sync: every user's phone, with a new one for the rows in ``changed``."""
    return [
        (f"user{i}@example.com", f"+1415666{i:04d}" if i in changed else f"+1415555{i:04d}")
        for i in range(count)
    ]


async def test_a_sync_of_1000_rows_with_950_unchanged_costs_at_most_70_calls(
    tmp_path: Path,
) -> None:
    emulator = make_emulator(phone_users(1000))
    changed = set(range(0, 1000, 20))  # 50 rows
    source = write_input(tmp_path / "sync.csv", sync_rows(1000, changed), ["true"] * 1000)
    out = tmp_path / "r.csv"
    summary = await run_job(emulator, "run", source, out)
    stats = emulator.stats(PROJECT)
    assert summary.counts == {"unchanged": 950, "updated": 50} and summary.exit_code == 0
    assert stats.calls <= 70  # counted against the budget: 10 searches, 1 check, 50 updates
    assert stats.total_requests <= 71 and summary.requests == stats.total_requests
    assert calls(emulator, UPDATE) == 50 and calls(emulator, SEARCH) == 11
    assert calls(emulator, LICENSE) == 1
    assert set(stats.updates) == {f"user{i}@example.com" for i in changed}
    assert emulator.user(PROJECT, "user20@example.com")["phone"] == "+14156660020"


async def test_the_result_gains_the_before_image_after_the_fixed_columns(tmp_path: Path) -> None:
    emulator = make_emulator(phone_users(3))
    source = write_input(
        tmp_path / "in.csv",
        [
            ("user0@example.com", "+14155550000"),  # same phone and flag
            ("user1@example.com", "+14156660001"),  # a new phone
            ("user2@example.com", "+14155550002"),  # same phone, to be unverified
            ("ghost@example.com", "+14156660003"),
            ("user0@example.com", "not a phone"),
        ],
        ["true", "true", "false", "true", "true"],
    )
    out = tmp_path / "r.csv"
    summary = await run_job(emulator, "run", source, out)
    rows = read(out)
    assert list(rows[0]) == [*RESULT_COLUMNS, *LOOKUP_COLUMNS]
    got = {int(r["row"]): (r["status"], r["phone_before"], r["verified_before"]) for r in rows}
    assert got == {
        1: ("unchanged", "+14155550000", "true"),
        2: ("updated", "+14155550001", "true"),
        3: ("updated", "+14155550002", "true"),  # the flag alone is a change
        4: ("not_found", None, None),
        5: ("invalid", None, None),
    }
    assert rows[1]["verified_phone"] == "true" and rows[2]["verified_phone"] == "false"
    assert calls(emulator, UPDATE) == 2  # not_found was settled by the search: no call
    assert emulator.user(PROJECT, "user2@example.com")["verifiedPhone"] is False
    assert summary.exit_code == 1  # not_found and invalid rows


async def test_a_row_without_a_verified_value_keeps_the_users_flag(tmp_path: Path) -> None:
    """A sync that does not know the flag must not un-verify phones users verified."""
    emulator = make_emulator(phone_users(2))  # user0 has +14155550000, verified
    source = write_input(
        tmp_path / "in.csv",
        [("user0@example.com", "+14155550000"), ("user1@example.com", "+14156660001")],
    )  # no verified column
    spy = Spy(emulator)
    out = tmp_path / "r.csv"
    summary = await run_job(emulator, "run", source, out, transport=spy)
    assert by_row(out) == {1: ("unchanged", None), 2: ("updated", None)}
    assert emulator.user(PROJECT, "user0@example.com")["verifiedPhone"] is True
    # only the new phone was sent, and with verified false said out loud
    assert spy.bodies[UPDATE] == [
        {
            "loginId": "user1@example.com",
            "phone": "+14156660001",
            "verified": False,
            "failOnConflict": True,
        }
    ]
    assert emulator.user(PROJECT, "user1@example.com")["verifiedPhone"] is False
    assert summary.exit_code == 0


async def test_an_empty_verified_cell_keeps_the_users_flag_too(tmp_path: Path) -> None:
    emulator = make_emulator(phone_users(2))
    rows = [("user0@example.com", "+14155550000"), ("user1@example.com", "+14155550001")]
    source = write_input(tmp_path / "in.csv", rows, ["", "false"])
    out = tmp_path / "r.csv"
    await run_job(emulator, "run", source, out)
    assert by_row(out) == {1: ("unchanged", None), 2: ("updated", "VERIFIED_ONLY")}
    assert emulator.user(PROJECT, "user0@example.com")["verifiedPhone"] is True
    assert emulator.user(PROJECT, "user1@example.com")["verifiedPhone"] is False


@pytest.mark.parametrize("api", ["update", "batch"])
async def test_a_verified_only_change_is_planned_and_sent_as_such(tmp_path: Path, api: str) -> None:
    users = [*phone_users(1, verified=False), *phone_users(2)[1:]]  # user0 unverified
    emulator = make_emulator(users)
    rows = [("user0@example.com", "+14155550000"), ("user1@example.com", "+14155550001")]
    source = write_input(tmp_path / "in.csv", rows, ["true", "false"])
    plan = tmp_path / "plan.csv"
    await run_job(emulator, "plan", source, plan, job={"api": api})
    planned = {int(r["row"]): (r["status"], r["reason"], r["verified"]) for r in read(plan)}
    assert planned == {
        1: ("change", "VERIFIED_ONLY", "true"),
        2: ("change", "VERIFIED_ONLY", "false"),
    }
    out = tmp_path / "r.csv"
    summary = await run_job(emulator, "run", source, out, job={"api": api})
    assert by_row(out) == {1: ("updated", "VERIFIED_ONLY"), 2: ("updated", "VERIFIED_ONLY")}
    assert emulator.user(PROJECT, "user0@example.com")["verifiedPhone"] is True
    assert emulator.user(PROJECT, "user1@example.com")["verifiedPhone"] is False
    assert summary.exit_code == 0


async def test_batch_mode_keeps_the_flag_of_a_row_without_a_value(tmp_path: Path) -> None:
    emulator = make_emulator(phone_users(3))
    rows = [("user0@example.com", "+14155550000"), ("user1@example.com", "+14156660001")]
    source = write_input(tmp_path / "in.csv", rows)
    spy = Spy(emulator)
    out = tmp_path / "r.csv"
    await run_job(emulator, "run", source, out, transport=spy, job={"api": "batch"})
    assert by_row(out) == {1: ("unchanged", None), 2: ("updated", None)}
    patch = {"loginId": "user1@example.com", "phone": "+14156660001", "verifiedPhone": False}
    assert spy.bodies[PATCH_BATCH] == [{"users": [patch]}]
    assert emulator.user(PROJECT, "user0@example.com")["verifiedPhone"] is True


async def test_no_lookup_sends_every_row_unread(tmp_path: Path) -> None:
    emulator = make_emulator(phone_users(150))
    source = write_input(tmp_path / "in.csv", sync_rows(150, {3, 120}), ["true"] * 150)
    out = tmp_path / "r.csv"
    summary = await run_job(emulator, "run", source, out, no_lookup=True)
    assert summary.counts == {"updated": 150}
    assert calls(emulator, SEARCH) == 0 and calls(emulator, UPDATE) == 150
    assert list(read(out)[0]) == list(RESULT_COLUMNS)  # no before-image: nothing to undo


async def test_no_lookup_without_a_verified_value_warns_once(tmp_path: Path) -> None:
    emulator = make_emulator(phone_users(3))
    bare = write_input(tmp_path / "in.csv", sync_rows(3, {1}))
    with capture_logs() as logs:
        await run_job(emulator, "run", bare, tmp_path / "a.csv", no_lookup=True)
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [e["event"] for e in warnings] == ["rows_sent_unverified"]
    assert "sent with verified false" in warnings[0]["message"]
    assert not any("example.com" in str(value) for value in warnings[0].values())
    quiet = [
        ("verified column", write_input(tmp_path / "v.csv", sync_rows(3, {1}), ["true"] * 3), {}),
        ("--verified", bare, {"verified": True}),
        ("lookups", bare, {"no_lookup": False}),
    ]
    for name, source, overrides in quiet:
        out = tmp_path / f"{name}.csv"
        with capture_logs() as logs:
            await run_job(emulator, "run", source, out, **{"no_lookup": True, **overrides})
        assert not [e for e in logs if e["log_level"] == "warning"], name


async def test_rerun_and_resume_send_nothing_twice(tmp_path: Path) -> None:
    emulator = make_emulator(phone_users(300))
    source = write_input(tmp_path / "in.csv", sync_rows(300, {5, 150, 299}), ["true"] * 300)
    out = tmp_path / "r.csv"
    await run_job(emulator, "run", source, out, limit=100)
    assert calls(emulator, UPDATE) == 1
    summary = await run_job(emulator, "run", source, out)
    assert calls(emulator, UPDATE) == 3 and summary.resumed_rows == 100
    assert calls(emulator, SEARCH) == 2 + 3  # (1 read + 1 check) for 100 rows, then for 200
    assert summary.counts == {"unchanged": 297, "updated": 3}
    fresh = tmp_path / "again.csv"
    again = await run_job(emulator, "run", source, fresh)
    assert again.counts == {"unchanged": 300} and calls(emulator, UPDATE) == 3


async def test_no_lookup_is_part_of_the_run_identity(tmp_path: Path) -> None:
    emulator = make_emulator(phone_users(3))
    source = write_input(tmp_path / "in.csv", sync_rows(3, {1}))
    out = tmp_path / "r.csv"
    await run_job(emulator, "run", source, out, limit=1, no_lookup=True)
    with pytest.raises(ResumeError, match="option no_lookup changed"):
        await run_job(emulator, "run", source, out)
    await run_job(emulator, "run", source, out, limit=1, no_lookup=True)  # the same resumes


async def test_with_allow_merge_the_phone_check_is_left_to_the_caller(tmp_path: Path) -> None:
    """--allow-merge asks for merges: no phone check, and failOnConflict false is sent."""
    users = [*phone_users(1), {"loginId": "+14156660000", "phone": ""}]
    emulator = make_emulator(users)
    source = write_input(tmp_path / "in.csv", [("user0@example.com", "+14156660000")])
    spy = Spy(emulator)
    out = tmp_path / "r.csv"
    await run_job(emulator, "run", source, out, transport=spy, allow_merge=True)
    assert len(spy.bodies[SEARCH]) == 1  # the read of user0, no check of the phone
    assert spy.bodies[UPDATE][0]["failOnConflict"] is False
    assert by_row(out) == {1: ("updated", None)}
    assert len(emulator.stats(PROJECT).merges) == 1


async def test_rows_whose_read_failed_end_failed_and_are_not_sent(tmp_path: Path) -> None:
    emulator = make_emulator(phone_users(150))

    async def second_read_fails(request: httpx.Request) -> httpx.Response | None:
        if request.url.path == SEARCH and b"user120@example.com" in request.content:
            return json_answer(400, {"errorCode": "E011004", "errorMessage": "bad"})
        return None

    source = write_input(tmp_path / "in.csv", sync_rows(150, set(range(150))), ["true"] * 150)
    out = tmp_path / "r.csv"
    spy = Spy(emulator, second_read_fails)
    summary = await run_job(emulator, "run", source, out, transport=spy)
    # the first 100 rows were read and sent; the read of the last 50 was refused
    assert summary.counts == {"updated": 100, "failed": 50} and summary.exit_code == 1
    failed = [r for r in read(out) if r["status"] == "failed"]
    assert {r["reason"] for r in failed} == {"REJECTED"}
    assert failed[0]["error_message"].startswith("lookup failed: search users: HTTP 400")
    assert calls(emulator, UPDATE) == 100
    # --retry-failed reads and sends them again
    again = await run_job(emulator, "run", source, out, retry_failed=True)
    assert again.counts == {"updated": 150}


async def test_reads_that_keep_failing_open_the_circuit(tmp_path: Path) -> None:
    emulator = make_emulator(phone_users(10))

    async def search_down(request: httpx.Request) -> httpx.Response | None:
        if request.url.path == SEARCH:
            return json_answer(503, {"errorCode": "E000503", "errorMessage": "unavailable"})
        return None

    rows = [(f"user{i}@example.com", f"+1415666{i:04d}") for i in range(3000)]
    source = write_input(tmp_path / "in.csv", rows)
    spy = Spy(emulator, search_down)
    summary = await run_job(
        emulator, "run", source, tmp_path / "r.csv", transport=spy, max_attempts=1
    )
    # each failed read is one failed call: 20 of them open the circuit, the rest is not read
    assert summary.exit_code == 3
    assert summary.counts == {"failed": 2000, "not_attempted": 1000}
    assert len(spy.bodies[SEARCH]) == 20 and calls(emulator, UPDATE) == 0
    assert (
        summary.stopped_reason is not None
        and "20 of the last 20 calls failed" in summary.stopped_reason
    )


@pytest.mark.virtual_time
async def test_a_429_during_the_reads_pauses_and_every_row_still_ends(
    tmp_path: Path, virtual_clock: VirtualClock
) -> None:
    emulator = make_emulator(
        phone_users(120), clock=virtual_clock.now, rate_limit=1000, rate_window=60.0, penalty=60.0
    )
    emulator.block(PROJECT, 60.0)
    source = write_input(tmp_path / "in.csv", sync_rows(120, {3, 110}), ["true"] * 120)
    out = tmp_path / "r.csv"
    summary = await run_job(emulator, "run", source, out)
    assert summary.counts == {"unchanged": 118, "updated": 2}
    assert summary.rate_limited >= 1
