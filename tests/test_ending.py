"""How every command ends: one exit-code rule, one stop reason, one summary and its log events."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import structlog

from batchphone.config import Endpoint, Secret, Settings
from batchphone.errors import BatchphoneError, LocalFaultError, OutputError
from batchphone.models import Reason, Status
from batchphone.modes.command import CommandPlan, decide
from batchphone.modes.ending import EXIT_INTERRUPTED, Tally, exit_code, finish, run_to_end
from batchphone.modes.job import Job
from batchphone.remote.stop import Stop

ENDPOINT = Endpoint("P2project", "https://api.descope.com", Secret("K2key"))


def plan(command: str = "run", **settings: object) -> CommandPlan:
    job = Job(command, Path("in.csv"), Path("out.csv"))  # type: ignore[arg-type]
    return decide(job, Settings(**settings), ENDPOINT)  # type: ignore[arg-type]


def test_every_row_a_success_is_0_else_1() -> None:
    assert exit_code({Status.UPDATED: 3, Status.UNCHANGED: 1}, Stop()) == 0
    assert exit_code({Status.UPDATED: 3, Status.FAILED: 0}, Stop()) == 0  # none of them
    assert exit_code({Status.UPDATED: 3, Status.NOT_FOUND: 1}, Stop()) == 1


def test_a_signal_is_130_and_a_fatal_error_its_own_code() -> None:
    stop = Stop()
    stop.request(Reason.STOPPED, fatal=LocalFaultError("disk full", cause=OutputError("full")))
    assert exit_code({Status.UPDATED: 1}, stop) == 4
    stop.interrupted = True  # a signal wins
    assert exit_code({Status.UPDATED: 1}, stop) == EXIT_INTERRUPTED == 130


def test_the_summary_says_why_and_where_the_result_file_went() -> None:
    stop = Stop()
    stop.request(Reason.STOPPED, fatal=BatchphoneError("canary: 1 of 2 updates did not stick"))
    tally = Tally(
        total=3,
        counts={Status.UPDATED: 1, Status.NOT_ATTEMPTED: 2},
        result_path="/tmp/copy.csv",
        where="a copy of the result file is at /tmp/copy.csv",
    )
    with structlog.testing.capture_logs() as logs:
        summary = finish(plan(), stop, tally, started=time.monotonic())
    assert summary.exit_code == 1
    assert summary.stopped_reason == (
        "canary: 1 of 2 updates did not stick; a copy of the result file is at /tmp/copy.csv"
    )
    assert summary.next_step is not None and "the canary stopped the run" in summary.next_step
    [finished] = [e for e in logs if e["event"] == "run_finished"]
    assert finished["counts"] == {"not_attempted": 2, "updated": 1}  # the texts, sorted
    assert list(finished["counts"]) == ["not_attempted", "updated"]


def test_a_report_is_not_resumable_a_run_is() -> None:
    stop = Stop()
    stop.interrupted = True
    tally = Tally(total=2, counts={Status.NOT_ATTEMPTED: 2}, result_path=None)
    report = finish(plan("validate"), stop, tally, started=time.monotonic())
    run = finish(plan(), stop, tally, started=time.monotonic())
    assert report.exit_code == run.exit_code == 130
    assert report.stopped_reason == run.stopped_reason == "interrupted"
    assert report.next_step == "nothing was sent: run the same command again to start over"
    assert run.next_step != report.next_step


@pytest.mark.anyio
async def test_both_paths_end_through_one_function() -> None:
    async def body() -> Tally:
        return Tally(total=1, counts={Status.VALID: 1}, result_path=None)

    summary = await run_to_end(
        plan("validate"), Stop(), body, handle_signals=False, started=time.monotonic()
    )
    assert (summary.exit_code, summary.counts) == (0, {"valid": 1})
