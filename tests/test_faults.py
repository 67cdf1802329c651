"""Faults, in-process on both backends: retries, 429 pauses, 401/403, circuit breaker, resume."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import polars as pl
import pytest

from batchphone.emulator import Emulator, Faults
from batchphone.errors import OutputError
from batchphone.files import journal as journal_module
from batchphone.files.journal import iter_records, journal_path
from batchphone.modes import job as job_module
from batchphone.modes import outfile
from tests.emulated import Spy, journal_results, new_phones, phone_users, run_job, write_input
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
    # "resumed: 0 rows already final; 5 sent now", not "5 rows already final; 5 sent now"
    assert retried.resumed_rows == 0 and retried.sent_now == 5


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
    # the read-back that failed leaves each row as its call left it: 3 attempts were sent
    # (not 0, which would tell support nothing went out), and the call's own error
    assert {r["attempts"] for r in rows} == {"3"}
    assert all("update phone: HTTP 500" in r["error_message"] for r in rows), rows[0]
    # not a sync that went through (a scheduler retries the task: the rerun settles them)
    assert not first.completed
    emulator.set_faults(Faults())
    again = await run(emulator, source, out)  # unsettled is not final: the rerun settles them
    assert again.counts == {"updated": 5} and again.exit_code == 0 and again.completed


async def test_an_undo_whose_reads_failed_names_retry_failed_as_its_next_step(
    tmp_path: Path,
) -> None:
    """Undo rows that failed are users not restored, and ``failed`` is final: rerunning the
    same undo restores none of them. The summary must name ``retry_failed=True``."""
    users = [{"loginId": f"user{i}@example.com", "phone": f"+1415000{i:04d}"} for i in range(5)]
    _, source = users_and_input(tmp_path, 5)
    emulator = make_emulator(users)
    out = tmp_path / "r.csv"
    first = await run(emulator, source, out, no_lookup=False)
    assert first.counts == {"updated": 5}
    emulator.set_faults(Faults(error_500=1.0))  # the undo's reads fail: nothing is sent
    undone = await run(emulator, out, tmp_path / "u.csv", command="undo", max_attempts=2)
    assert undone.counts == {"failed": 5} and undone.exit_code == 1
    assert undone.next_step is not None and "retry_failed=True" in undone.next_step
    emulator.set_faults(Faults())
    again = await run(emulator, out, tmp_path / "u.csv", command="undo")
    assert again.counts == {"failed": 5}  # final: the same command alone does nothing
    retried = await run(emulator, out, tmp_path / "u.csv", command="undo", retry_failed=True)
    assert retried.counts == {"updated": 5} and retried.next_step is None
    phones = {u["loginIds"][0]: u["phone"] for u in emulator.users(PROJECT)}
    assert phones == {u["loginId"]: u["phone"] for u in users}


async def test_circuit_breaker_stops_a_run_that_mostly_fails(tmp_path: Path) -> None:
    users, source = users_and_input(tmp_path, 60)
    emulator = make_emulator(users)
    emulator.set_faults(Faults(error_500=1.0))
    out = tmp_path / "r.csv"
    summary = await run(emulator, source, out, max_attempts=1, concurrency=4)
    assert summary.exit_code == 3
    assert summary.stopped_reason and "calls failed" in summary.stopped_reason
    # what to do is said once, in the next step, and it is not a bare "rerun"
    assert "rerun" not in summary.stopped_reason
    assert summary.next_step and summary.next_step.startswith("find why the calls failed")
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


# -- local faults after the first update: stop as for Ctrl-C, keep every row, exit 4 ----------


class FullDisk:
    """The journal's disk fills once ``full`` is set: its next write is torn (half written),
    then every write and fsync of it fails with ENOSPC, as on a full file system."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = False
        self.failed = 0
        self.fds: set[int] = set()
        real_open, real_write, real_fsync = journal_module.open_nofollow, os.write, os.fsync
        real_close = os.close

        def opening(path: Path, flags: int, mode: int = 0o600) -> int:
            fd = real_open(path, flags, mode)
            if path.name.endswith(".journal") and flags & os.O_APPEND:
                self.fds.add(fd)
            return fd

        def write(fd: int, data: bytes) -> int:
            if fd in self.fds and self.full:
                self.failed += 1
                if self.failed == 1 and len(data) > 1:
                    return real_write(fd, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(fd, data)

        def fsync(fd: int) -> None:
            if fd in self.fds and self.full:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_fsync(fd)

        def close(fd: int) -> None:
            self.fds.discard(fd)  # its number may be reused by a file on another disk
            real_close(fd)

        monkeypatch.setattr(journal_module, "open_nofollow", opening)
        monkeypatch.setattr(os, "close", close)
        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "fsync", fsync)


def on_update(emulator: Emulator, nth: int, act: Callable[[], None]) -> Spy:
    """A transport that calls ``act`` when the ``nth`` update arrives (others are in flight)."""
    seen = {"updates": 0}

    async def handler(request: httpx.Request) -> httpx.Response | None:
        if request.url.path == UPDATE:
            seen["updates"] += 1
            if seen["updates"] == nth:
                act()
        return None

    return Spy(emulator, handler)


def changed_users(emulator: Emulator, rows: list[tuple[str, str]]) -> set[str]:
    """Login ids whose user now holds the row's new phone."""
    return {
        login
        for login, phone in rows
        if (emulator.user(PROJECT, login) or {}).get("phone") == phone
    }


def assert_every_row_kept(out: Path, rows: list[tuple[str, str]], changed: set[str]) -> None:
    """One result row per input row; `updated` exactly where the user was changed."""
    results = read(out)
    assert [int(r["row"]) for r in results] == list(range(1, len(rows) + 1))
    assert {r["loginId"] for r in results if r["status"] == "updated"} == changed
    rest = {(r["status"], r["reason"]) for r in results if r["status"] != "updated"}
    assert rest == {("not_attempted", "STOPPED")}


async def test_a_full_disk_under_the_journal_keeps_the_calls_in_flight_and_exits_4(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = new_phones(80)
    emulator = make_emulator(phone_users(80))
    emulator.set_faults(Faults(latency=0.05))
    source = write_input(tmp_path / "in.csv", rows, ["true"] * 80)
    out = tmp_path / "r.csv"
    disk = FullDisk(monkeypatch)

    def fill() -> None:
        disk.full = True

    # the 10th update arrives with 7 more on the wire: the disk fills under their answers
    spy = on_update(emulator, 10, fill)
    summary = await run_job(emulator, "run", source, out, transport=spy, concurrency=8)
    assert disk.failed >= 1
    assert summary.exit_code == 4
    assert summary.stopped_reason is not None
    assert "cannot write the journal" in summary.stopped_reason
    assert "No space left on device" in summary.stopped_reason
    assert "rerun" not in summary.stopped_reason  # the next step says it, once
    assert summary.next_step and summary.next_step.startswith("fix the local cause")
    assert summary.result_path == str(out)
    changed = changed_users(emulator, rows)
    assert len(changed) >= 10  # the calls in flight were answered, not dropped
    assert_every_row_kept(out, rows, changed)
    # rows answered after the disk filled are in the result file though not in the journal
    on_disk = {r["row"] for r in iter_records(journal_path(out)) if r["status"] == "updated"}
    assert len(on_disk) < len(changed) == summary.counts["updated"]
    # the disk has room again: the same command resumes and finishes
    disk.full = False
    again = await run_job(emulator, "run", source, out)
    assert again.exit_code == 0
    assert changed_users(emulator, rows) == {login for login, _ in rows}
    assert len(read(out)) == 80


async def test_a_full_disk_before_the_first_update_is_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = new_phones(20)
    emulator = make_emulator(phone_users(20))
    source = write_input(tmp_path / "in.csv", rows, ["true"] * 20)
    disk = FullDisk(monkeypatch)
    disk.full = True  # the header goes in; the license call's record does not
    with pytest.raises(OutputError, match=r"cannot write the journal .*No space left on device"):
        await run_job(emulator, "run", source, tmp_path / "r.csv")
    assert update_calls(emulator) == 0
    assert not changed_users(emulator, rows)


async def test_a_result_file_that_cannot_be_written_goes_to_a_copy_that_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = new_phones(40)
    emulator = make_emulator(phone_users(40))
    emulator.set_faults(Faults(latency=0.02))
    source = write_input(tmp_path / "in.csv", rows, ["true"] * 40)
    out = tmp_path / "r.csv"
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    disk = FullDisk(monkeypatch)
    write_results = outfile.write_results

    def full_beside_out(records: Any, path: Path, **kwargs: Any) -> int:
        if path.parent == out.parent:  # the result's folder is on the full disk too
            raise OutputError(f"{path}: cannot write the result (No space left on device)")
        return write_results(records, path, **kwargs)

    monkeypatch.setattr(outfile, "write_results", full_beside_out)

    def fill() -> None:
        disk.full = True

    summary = await run_job(
        emulator, "run", source, out, transport=on_update(emulator, 5, fill), concurrency=4
    )
    assert summary.exit_code == 4
    [copy] = list(temp.iterdir())
    assert copy.name.endswith("-r.csv") and stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert summary.result_path == str(copy)
    assert summary.stopped_reason is not None
    assert f"a copy of the result file is at {copy}" in summary.stopped_reason
    assert not out.exists()
    assert_every_row_kept(copy, rows, changed_users(emulator, rows))


async def test_a_budget_file_on_a_full_disk_stops_the_run_with_exit_4(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_dir: Path
) -> None:
    rows = new_phones(60)
    emulator = make_emulator(phone_users(60))
    emulator.set_faults(Faults(latency=0.03))
    source = write_input(tmp_path / "in.csv", rows, ["true"] * 60)
    out = tmp_path / "r.csv"
    full = {"on": False}
    replace = os.replace

    def replacing(src: Any, dst: Any) -> None:
        if full["on"] and Path(dst).parent == state_dir / "budget":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", replacing)

    def fill() -> None:
        full["on"] = True

    summary = await run_job(
        emulator,
        "run",
        source,
        out,
        transport=on_update(emulator, 8, fill),
        concurrency=6,
        budget_store="file",
    )
    full["on"] = False
    assert summary.exit_code == 4
    assert summary.stopped_reason and "budget file" in summary.stopped_reason
    changed = changed_users(emulator, rows)
    assert 8 <= len(changed) < 60
    assert_every_row_kept(out, rows, changed)


async def test_an_input_changed_mid_run_stops_it_with_exit_4(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job_module, "BATCH_ROWS", 10)
    rows = new_phones(60)
    emulator = make_emulator(phone_users(60))
    source = write_input(tmp_path / "in.csv", rows, ["true"] * 60)
    out = tmp_path / "r.csv"

    def edit() -> None:  # someone saves the file from a spreadsheet while the run goes on
        with source.open("a") as file:
            file.write("late@example.com,+14155550199,true\n")

    summary = await run_job(
        emulator, "run", source, out, transport=on_update(emulator, 3, edit), concurrency=2
    )
    assert summary.exit_code == 4
    assert summary.stopped_reason and "changed during the run" in summary.stopped_reason
    changed = changed_users(emulator, rows)
    assert 3 <= len(changed) < 60
    assert_every_row_kept(out, rows, changed)


async def test_a_real_full_disk_under_the_journal_and_the_result_file(
    tmp_path: Path, small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = new_phones(300)
    emulator = make_emulator(phone_users(300))
    emulator.set_faults(Faults(latency=0.01))
    source = write_input(tmp_path / "in.csv", rows, ["true"] * 300)
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    out = small_disk / "r.csv"
    summary = await run_job(emulator, "run", source, out, concurrency=8)
    assert summary.exit_code == 4
    [copy] = list(temp.iterdir())
    assert summary.result_path == str(copy)
    assert summary.stopped_reason is not None
    assert f"cannot write the journal {journal_path(out)} (No space left on device)" in (
        summary.stopped_reason
    )
    changed = changed_users(emulator, rows)
    assert 0 < len(changed) < 300
    assert_every_row_kept(copy, rows, changed)
