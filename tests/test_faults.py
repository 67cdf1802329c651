"""Faults, in-process on both backends: retries, 429 pauses, 401/403, circuit breaker, resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
import polars as pl
import pytest

from batchphone.emulator import Emulator, Faults
from tests.emulated import journal_results
from tests.test_runner import PROJECT, UPDATE, make_emulator, read, run, update_calls
from tests.virtual import VirtualClock

pytestmark = pytest.mark.anyio


def users_and_input(tmp_path: Path, n: int) -> tuple[list[dict[str, Any]], Path]:
    users = [{"loginId": f"user{i}@example.com"} for i in range(n)]
    source = tmp_path / "in.csv"
    pl.DataFrame(
        {"loginId": [u["loginId"] for u in users], "phone": [f"+1415555{i:04d}" for i in range(n)]}
    ).write_csv(source)
    return users, source


@pytest.mark.virtual_time
async def test_fault_matrix_every_row_ends_updated(
    tmp_path: Path, virtual_clock: VirtualClock
) -> None:
    users, source = users_and_input(tmp_path, 150)
    emulator = make_emulator(
        users, clock=virtual_clock.now, rate_limit=1000, rate_window=60.0, penalty=30.0
    )
    emulator.set_faults(
        Faults(
            seed=11,
            latency=0.1,
            error_503=0.10,
            drop=0.05,
            timeout=0.02,
            lost_answer=0.03,
            html_502=0.02,
            error_520=0.02,
            error_524=0.01,
        )
    )
    out = tmp_path / "r.csv"

    async def block_in_the_middle() -> None:
        await anyio.sleep(1.0)  # 150 rows at 8 in flight and 100 ms each take 2 s at least
        emulator.block(PROJECT, 30.0)

    async with anyio.create_task_group() as group:
        group.start_soon(block_in_the_middle)
        summary = await run(emulator, source, out, max_attempts=15, timeout=5.0, concurrency=8)
    rows = read(out)
    assert summary.counts == {"updated": 150}
    assert [int(r["row"]) for r in rows] == list(range(1, 151))
    assert any(int(r["attempts"]) > 1 for r in rows)
    assert summary.rate_limited >= 1
    assert emulator.stats(PROJECT).rate_limited >= 1
    final = {u["loginId"]: emulator.user(PROJECT, u["loginId"]) for u in users}
    assert all(user and user["phone"] for user in final.values())
    intents, results = journal_results(out)
    # one record per row, and ahead of it the row's intent (once per send, not per attempt)
    assert sorted(r["row"] for r in results) == list(range(1, 151))
    assert sorted(r["row"] for r in intents) == list(range(1, 151))


class FailingUpdates(httpx.AsyncBaseTransport):
    """Every update answers 500 without being applied; every other call goes through."""

    def __init__(self, emulator: Emulator) -> None:
        self.inner = emulator.transport()
        self.updates = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == UPDATE:
            self.updates += 1
            return httpx.Response(500, json={"errorCode": "E000500", "errorDescription": "boom"})
        return await self.inner.handle_async_request(request)


async def test_a_lost_answer_is_read_back_sent_again_then_not_applied(tmp_path: Path) -> None:
    users, source = users_and_input(tmp_path, 5)
    emulator = make_emulator(users)
    out = tmp_path / "r.csv"
    failing = FailingUpdates(emulator)
    first = await run(emulator, source, out, transport=failing, max_attempts=3)
    rows = read(out)
    # 500s after every attempt: unsettled, read back (not applied), sent again, read back again
    assert {(r["status"], r["reason"]) for r in rows} == {("failed", "NOT_APPLIED")}
    assert first.exit_code == 1 and failing.updates == 5 * 3 * 2
    again = await run(emulator, source, out)
    assert again.counts == {"failed": 5} and update_calls(emulator) == 0  # failed is final
    retried = await run(emulator, source, out, retry_failed=True)
    assert retried.counts == {"updated": 5} and retried.exit_code == 0
    assert update_calls(emulator) == 5


async def test_every_call_failing_leaves_rows_unsettled_until_a_rerun_settles_them(
    tmp_path: Path,
) -> None:
    users, source = users_and_input(tmp_path, 5)
    emulator = make_emulator(users)
    emulator.set_faults(Faults(error_500=1.0))  # the reads too: nothing can settle them
    out = tmp_path / "r.csv"
    first = await run(emulator, source, out, max_attempts=3)
    rows = read(out)
    assert {(r["status"], r["reason"]) for r in rows} == {("unsettled", "ANSWER_LOST")}
    assert first.exit_code == 1 and update_calls(emulator) == 15
    emulator.set_faults(Faults())
    again = await run(emulator, source, out)  # unsettled is not final: the rerun settles them
    assert again.counts == {"updated": 5} and again.exit_code == 0


async def test_circuit_breaker_stops_a_run_that_mostly_fails(tmp_path: Path) -> None:
    users, source = users_and_input(tmp_path, 60)
    emulator = make_emulator(users)
    emulator.set_faults(Faults(error_500=1.0))
    out = tmp_path / "r.csv"
    summary = await run(emulator, source, out, max_attempts=1, concurrency=4)
    assert summary.exit_code == 3
    assert summary.stopped_reason and "calls failed" in summary.stopped_reason
    rows = read(out)
    assert len(rows) == 60
    # a 500 says nothing of whether the update was applied: those rows are unsettled
    assert {r["status"] for r in rows} == {"unsettled", "not_attempted"}
    assert {r["reason"] for r in rows if r["status"] == "not_attempted"} == {"CIRCUIT_OPEN"}
    assert update_calls(emulator) <= 20 + 4


async def test_403_stops_at_once_naming_the_permission(tmp_path: Path) -> None:
    users, source = users_and_input(tmp_path, 30)
    emulator = make_emulator(users)
    inner = emulator.transport()

    class Forbidden(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path == UPDATE:
                return httpx.Response(
                    403, json={"errorCode": "E011005", "errorDescription": "Forbidden"}
                )
            return await inner.handle_async_request(request)

    out = tmp_path / "r.csv"
    summary = await run(emulator, source, out, transport=Forbidden(), concurrency=2)
    assert summary.exit_code == 3
    assert summary.stopped_reason and "permission" in summary.stopped_reason
    rows = read(out)
    assert len(rows) == 30 and {r["status"] for r in rows} == {"not_attempted"}
    assert update_calls(emulator) == 0


@pytest.mark.virtual_time
async def test_restarted_run_does_not_burst_into_a_spent_budget(
    tmp_path: Path, virtual_clock: VirtualClock
) -> None:
    users, source = users_and_input(tmp_path, 40)
    emulator = make_emulator(
        users, clock=virtual_clock.now, rate_limit=20, rate_window=60.0, penalty=60.0
    )
    out = tmp_path / "r.csv"
    # the license handshake and 19 updates spend the whole window at once
    await run(emulator, source, out, limit=19, rate_calls=20, rate_period=60.0)
    assert emulator.stats(PROJECT).max_window_calls == 19
    # immediately: without seeding from the journal, 19 more updates would go out at once
    summary = await run(emulator, source, out, rate_calls=20, rate_period=60.0)
    stats = emulator.stats(PROJECT)
    assert summary.counts == {"updated": 40}
    assert stats.rate_limited == 0
    assert stats.max_window_calls <= 20


async def test_unknown_project_is_a_fatal_401(tmp_path: Path, sample_emulator: Emulator) -> None:
    _, source = users_and_input(tmp_path, 3)
    summary = await run(sample_emulator, source, tmp_path / "r.csv", project_id="P2nosuchproject")
    assert summary.exit_code == 3
    assert summary.stopped_reason and "project" in summary.stopped_reason


@pytest.fixture
def sample_emulator(tmp_path: Path) -> Emulator:
    return make_emulator([{"loginId": "user0@example.com"}])


@pytest.mark.virtual_time
async def test_blocks_make_the_run_settle_below_the_real_budget(
    tmp_path: Path, virtual_clock: VirtualClock
) -> None:
    """The user's --rate is above the project's real budget: each block costs 10% of the rate."""
    users, source = users_and_input(tmp_path, 90)
    emulator = make_emulator(
        users, clock=virtual_clock.now, rate_limit=20, rate_window=60.0, penalty=60.0
    )
    summary = await run(emulator, source, tmp_path / "r.csv", rate_calls=24, rate_period=60.0)
    stats = emulator.stats(PROJECT)
    assert summary.counts == {"updated": 90}
    assert 1 <= stats.blocks <= 3  # 24 -> 21 -> 18: below 20, no more blocks
