"""``run --canary N``: the first N updates are read back; the run goes on only if all stuck."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchphone.cli import main
from batchphone.emulator import Emulator, Faults
from batchphone.emulator.server import ServerThread
from batchphone.errors import UsageError
from batchphone.models import UpdateRequest, User
from batchphone.remote.canary import mismatch
from tests.emulated import (
    KEY,
    LOAD,
    PATCH_BATCH,
    PROJECT,
    UPDATE,
    Spy,
    by_row,
    calls,
    make_emulator,
    new_phones,
    phone_users,
    read,
    run_job,
    write_input,
)

pytestmark = pytest.mark.anyio


async def test_a_canary_that_passes_lets_the_run_go_on(tmp_path: Path) -> None:
    emulator = make_emulator(phone_users(20))
    source = write_input(tmp_path / "in.csv", new_phones(20), ["true"] * 20)
    spy = Spy(emulator)
    summary = await run_job(
        emulator,
        "run",
        source,
        tmp_path / "r.csv",
        transport=spy,
        job={"canary": 5},
        no_lookup=True,
    )
    assert summary.counts == {"updated": 20} and summary.exit_code == 0
    # five reads, of the five first rows, each counted in the project's budget
    assert [b["loginId"] for b in spy.bodies[LOAD]] == [f"user{i}@example.com" for i in range(5)]
    assert emulator.stats(PROJECT).calls == 20 + 5
    assert summary.requests == 1 + 20 + 5


async def test_a_run_the_canary_stopped_is_no_success_for_a_scheduler(tmp_path: Path) -> None:
    """Exit 1, but 17 rows never sent: ``completed`` (the Airflow example's check, the metrics'
    last success) must not call it a sync that went through, and the next step is named."""
    from batchphone.files.metrics import LAST_SUCCESS, write_metrics

    emulator = make_emulator(phone_users(20))
    emulator.set_faults(Faults(ignore_update=1.0))
    source = write_input(tmp_path / "in.csv", new_phones(20), ["true"] * 20)
    summary = await run_job(emulator, "run", source, tmp_path / "r.csv", job={"canary": 3})
    assert summary.exit_code == 1 and summary.counts["not_attempted"] == 17
    assert not summary.completed
    assert summary.next_step is not None and "rerun the same command" in summary.next_step
    metrics = tmp_path / "sync.prom"
    write_metrics(metrics, summary, command="run")
    assert LAST_SUCCESS not in metrics.read_text()


async def test_a_canary_read_that_fails_is_not_called_an_update_that_did_not_stick(
    tmp_path: Path,
) -> None:
    """The updates were applied; only the read back failed (a network fault): the stop reason
    must say that, not send the engineer looking for a rule that drops updates."""
    import httpx

    emulator = make_emulator(phone_users(20))
    source = write_input(tmp_path / "in.csv", new_phones(20), ["true"] * 20)

    async def reads_fail(request: httpx.Request) -> httpx.Response | None:
        if request.url.path == LOAD:
            return httpx.Response(503, json={"errorCode": "E000000", "errorMessage": "busy"})
        return None

    summary = await run_job(
        emulator,
        "run",
        source,
        tmp_path / "r.csv",
        transport=Spy(emulator, reads_fail),
        job={"canary": 3},
        no_lookup=True,
        max_attempts=1,
    )
    assert summary.exit_code == 1 and summary.stopped_reason is not None
    assert "did not stick" not in summary.stopped_reason
    assert summary.stopped_reason.startswith("canary: 3 of 3 updates could not be read back")


async def test_a_silently_ignored_update_stops_the_run_with_exit_1(tmp_path: Path) -> None:
    emulator = make_emulator(phone_users(20))
    emulator.set_faults(Faults(ignore_update=1.0))  # 200 and the new user, but nothing stored
    source = write_input(tmp_path / "in.csv", new_phones(20), ["true"] * 20)
    out = tmp_path / "r.csv"
    summary = await run_job(emulator, "run", source, out, job={"canary": 3}, concurrency=4)
    assert summary.exit_code == 1
    assert calls(emulator, UPDATE) == 3 and calls(emulator, LOAD) == 3
    got = by_row(out)
    assert [got[i] for i in (1, 2, 3)] == [("failed", "CANARY_MISMATCH")] * 3
    assert {got[i] for i in range(4, 21)} == {("not_attempted", "STOPPED")}
    assert summary.stopped_reason == (
        "canary: 3 of 3 updates did not stick (rows 2, 3, 4: see their error_message in the "
        "result file); the remaining rows were not sent: find the cause, then rerun the same "
        "command to resume"
    )
    first = read(out)[0]
    assert first["attempts"] == "1" and '"phone":"+14155550000"' in first["user"]

    # the cause is fixed: a rerun sends the rest; the canary rows stay failed until retried
    emulator.set_faults(Faults())
    rerun = await run_job(emulator, "run", source, out)
    assert rerun.counts == {"failed": 3, "updated": 17}
    retried = await run_job(emulator, "run", source, out, retry_failed=True)
    assert retried.counts == {"updated": 20} and retried.exit_code == 0


async def test_a_canary_in_batch_mode_reads_back_the_first_batch(tmp_path: Path) -> None:
    emulator = make_emulator(phone_users(30))
    source = write_input(tmp_path / "in.csv", new_phones(30), ["true"] * 30)
    spy = Spy(emulator)
    summary = await run_job(
        emulator,
        "run",
        source,
        tmp_path / "r.csv",
        transport=spy,
        job={"api": "batch", "canary": 4, "batch_size": 10},
    )
    assert summary.counts == {"updated": 30}
    assert [len(b["users"]) for b in spy.bodies[PATCH_BATCH]] == [4, 10, 10, 6]
    assert len(spy.bodies[LOAD]) == 4


async def test_a_canary_larger_than_the_input_is_checked_at_the_end(tmp_path: Path) -> None:
    emulator = make_emulator(phone_users(2))
    emulator.set_faults(Faults(ignore_update=1.0))
    source = write_input(tmp_path / "in.csv", new_phones(2), ["true"] * 2)
    summary = await run_job(emulator, "run", source, tmp_path / "r.csv", job={"canary": 10})
    assert summary.exit_code == 1 and summary.counts == {"failed": 2}
    assert summary.stopped_reason is not None and "2 of 2 updates" in summary.stopped_reason


async def test_rows_that_were_not_updated_are_not_read_back(tmp_path: Path) -> None:
    emulator = make_emulator(phone_users(3))
    rows = [("ghost@example.com", "+14156669999"), *new_phones(3)]
    source = write_input(tmp_path / "in.csv", rows, ["true"] * 4)
    spy = Spy(emulator)
    summary = await run_job(
        emulator,
        "run",
        source,
        tmp_path / "r.csv",
        transport=spy,
        job={"canary": 2},
        no_lookup=True,
    )  # without the reads the unknown user is sent, and ends not_found by its update
    assert summary.counts == {"not_found": 1, "updated": 3}
    assert [b["loginId"] for b in spy.bodies[LOAD]] == ["user0@example.com"]


async def test_a_canary_needs_a_run_that_sends(tmp_path: Path) -> None:
    emulator = make_emulator(phone_users(1))
    source = write_input(tmp_path / "in.csv", new_phones(1))
    with pytest.raises(UsageError, match=r"canary=\.\.\. reads back the updates it sent"):
        await run_job(emulator, "run", source, tmp_path / "r.csv", job={"canary": 1}, dry_run=True)


def test_mismatch_compares_the_phone_and_the_flag_that_was_sent() -> None:
    stored = User.from_api
    request = UpdateRequest(row=7, login_id="a", phone="+14155550100", verified=None)
    # a row without a verified value is sent with false: a stored true did not come from it
    assert mismatch(request, stored({"phone": "+14155550100", "verifiedPhone": False})) is None
    assert mismatch(request, stored({"phone": "+14155550100", "verifiedPhone": True})) == (
        "row 7 (a): sent phone +14155550100 verified false, "
        "read back phone +14155550100 verifiedPhone true"
    )
    assert mismatch(request, None) == "row 7 (a): the user was not found when read back"
    flagged = UpdateRequest(row=7, login_id="a", phone="+14155550100", verified=True)
    assert mismatch(flagged, stored({"phone": "+14155550100", "verifiedPhone": False})) == (
        "row 7 (a): sent phone +14155550100 verified true, "
        "read back phone +14155550100 verifiedPhone false"
    )
    removal = UpdateRequest(row=7, login_id="a", phone="", verified=True)
    assert mismatch(removal, stored({"phone": "", "verifiedPhone": False})) is None


@pytest.fixture
def served() -> Iterator[tuple[Emulator, str]]:
    emulator = make_emulator(phone_users(10))
    emulator.set_faults(Faults(ignore_update=1.0))
    with ServerThread(emulator, port=0) as base_url:
        yield emulator, base_url


def test_the_command_names_the_mismatched_rows_only(
    served: tuple[Emulator, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    emulator, base_url = served
    source = write_input(tmp_path / "in.csv", new_phones(10), ["true"] * 10)
    result = CliRunner().invoke(
        main,
        ["run", str(source), "--out", "r.csv", "--canary", "2", "--log-format", "console"],
        env={
            "DESCOPE_PROJECT_ID": PROJECT,
            "DESCOPE_MANAGEMENT_KEY": KEY,
            "DESCOPE_BASE_URI": base_url,
        },
        catch_exceptions=False,
    )
    assert result.exit_code == 1
    # which rows, not what they hold: stderr ends up in cron mail (the result file has it)
    assert "  stopped: canary: 2 of 2 updates did not stick (rows 2, 3: " in result.stderr
    assert "user0@example.com" not in result.stderr and "+1415666" not in result.stderr
    assert "canary_failed" in result.stderr
    assert calls(emulator, UPDATE) == 2 and KEY not in result.stderr
