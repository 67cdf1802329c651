"""A job: which mode a command runs in, which reads come first, and the rows it prepares."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import structlog

from batchphone.config import Settings
from batchphone.errors import UsageError
from batchphone.files.reader import InputSpec, open_input
from batchphone.models import Reason, RowResult, Status, UpdateRequest
from batchphone.modes.job import Job, job_mode, prepared_batches, screen_rules
from batchphone.modes.reverse import open_results
from batchphone.remote.screen import ScreenRules
from batchphone.rows.prepare import Mode
from tests.emulated import write_input

SETTINGS = Settings()


def job(command: str = "run", **options: object) -> Job:
    return Job(command, Path("in.csv"), Path("out.csv"), **options)  # type: ignore[arg-type]


# -- Job: options checked when it is made ---------------------------------------------------


@pytest.mark.parametrize(
    ("options", "setting", "message"),
    [
        ({"api": "bulk"}, "api", "api: expected update or batch, not 'bulk'"),
        ({"batch_size": 0}, "batch_size", "batch_size: expected 1..100, not 0"),
        ({"batch_size": 101}, "batch_size", "batch_size: expected 1..100, not 101"),
        ({"canary": -1}, "canary", "canary: expected N >= 1, not -1"),
    ],
)
def test_a_bad_option_is_refused_when_the_job_is_made(
    options: dict[str, object], setting: str, message: str
) -> None:
    with pytest.raises(UsageError) as caught:
        job(**options)
    assert str(caught.value) == message and caught.value.setting == setting


@pytest.mark.parametrize("command", ["run", "plan", "undo"])
def test_only_a_validate_goes_without_a_result_file(command: str) -> None:
    with pytest.raises(UsageError, match="out: the result file is required"):
        Job(command, Path("in.csv"), None)  # type: ignore[arg-type]
    assert Job("validate", Path("in.csv"), None).out_path is None  # type: ignore[arg-type]


# -- job_mode ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "dry_run", "mode"),
    [
        ("run", False, Mode.RUN),
        ("run", True, Mode.DRY_RUN),
        ("validate", False, Mode.VALIDATE),
        ("validate", True, Mode.VALIDATE),
        ("plan", False, Mode.PLAN),
        ("undo", False, Mode.RUN),
        ("undo", True, Mode.PLAN),  # a dry undo reads the users as the undo would: a plan
    ],
)
def test_the_mode_of_each_command(command: str, dry_run: bool, mode: Mode) -> None:
    assert job_mode(job(command), replace(SETTINGS, dry_run=dry_run)) is mode


def test_allow_merge_and_the_batch_api_are_refused_together_when_sending() -> None:
    merging = replace(SETTINGS, allow_merge=True)
    refused = "allow_merge=True cannot be used with api=batch"
    with pytest.raises(UsageError, match=refused) as caught:
        job_mode(job(api="batch"), merging)
    assert caught.value.setting == "allow_merge"
    # nothing is sent: nothing to refuse
    assert job_mode(job(api="batch"), replace(merging, dry_run=True)) is Mode.DRY_RUN
    assert job_mode(job("plan", api="batch"), merging) is Mode.PLAN
    assert job_mode(job(api="update"), merging) is Mode.RUN


@pytest.mark.parametrize(
    ("command", "dry_run"), [("run", True), ("validate", False), ("plan", False)]
)
def test_a_canary_is_refused_when_nothing_is_sent(command: str, dry_run: bool) -> None:
    with pytest.raises(UsageError, match=r"canary=\.\.\. reads back the updates it sent") as caught:
        job_mode(job(command, canary=5), replace(SETTINGS, dry_run=dry_run))
    assert caught.value.setting == "canary"


def test_a_canary_goes_with_a_run() -> None:
    assert job_mode(job(canary=5), SETTINGS) is Mode.RUN


# -- screen_rules: lookups by default, none with no_lookup ---------------------------------


def rules(command: str = "run", **settings: object) -> ScreenRules:
    chosen = replace(SETTINGS, **settings)  # type: ignore[arg-type]
    the_job = job(command)
    return screen_rules(the_job, chosen, job_mode(the_job, chosen))


def test_a_run_reads_every_user_first_by_default() -> None:
    assert rules() == ScreenRules(compare=True, guard=True, plan=False)


def test_no_lookup_reads_nothing_unless_the_batch_api_must_guard() -> None:
    assert rules(no_lookup=True) == ScreenRules()
    assert not rules(no_lookup=True).active
    # a batch patch has no failOnConflict: the phones are still checked against login ids
    the_job = job(api="batch")
    chosen = replace(SETTINGS, no_lookup=True)
    batch = screen_rules(the_job, chosen, job_mode(the_job, chosen))
    assert batch == ScreenRules(compare=False, guard=True, plan=False)


def test_allow_merge_drops_the_guard_but_not_the_reads() -> None:
    assert rules(allow_merge=True) == ScreenRules(compare=True, guard=False, plan=False)


def test_undo_always_reads_and_a_plan_always_guards() -> None:
    assert rules("undo", no_lookup=True) == ScreenRules(compare=True, guard=True, plan=False)
    assert rules("plan", no_lookup=True, allow_merge=True) == ScreenRules(
        compare=True, guard=True, plan=True
    )


@pytest.mark.parametrize(("command", "dry_run"), [("validate", False), ("run", True)])
def test_nothing_is_read_when_nothing_could_be_sent(command: str, dry_run: bool) -> None:
    assert rules(command, dry_run=dry_run) == ScreenRules()


# -- prepared_batches ----------------------------------------------------------------------


def rows_of(batches: object) -> list[UpdateRequest | RowResult]:
    return [item for batch in batches for item in batch]  # type: ignore[attr-defined]


def test_input_rows_are_judged_lazily_and_counted(tmp_path: Path) -> None:
    path = write_input(tmp_path / "in.csv", [("a@x.com", "+14155550100"), ("", "+14155550101")])
    source = open_input(InputSpec(path))
    batches, count = prepared_batches(source, SETTINGS, Mode.RUN)
    assert count == 2
    first, second = rows_of(batches)
    assert isinstance(first, UpdateRequest) and first.phone == "+14155550100"
    assert isinstance(second, RowResult) and second.reason is Reason.EMPTY_LOGIN_ID


def test_the_limit_bounds_the_rows_and_the_count(tmp_path: Path) -> None:
    rows = [(f"u{i}@x.com", f"+1415555{i:04d}") for i in range(5)]
    source = open_input(InputSpec(write_input(tmp_path / "in.csv", rows)))
    batches, count = prepared_batches(source, replace(SETTINGS, limit=3), Mode.VALIDATE)
    judged = rows_of(batches)
    assert count == 3 and [r.row for r in judged] == [1, 2, 3]
    assert {r.status for r in judged if isinstance(r, RowResult)} == {Status.VALID}


@pytest.mark.parametrize(
    ("no_lookup", "verified_column", "setting", "warned"),
    [
        (True, False, None, True),
        (True, True, None, False),  # the rows say it
        (True, False, True, False),  # --verified says it
        (False, False, None, False),  # the reads keep each user's flag
    ],
)
def test_a_warning_when_every_row_would_be_sent_unverified(
    tmp_path: Path, no_lookup: bool, verified_column: bool, setting: bool | None, warned: bool
) -> None:
    verified = ["true"] if verified_column else None
    path = write_input(tmp_path / "in.csv", [("a@x.com", "+14155550100")], verified)
    source = open_input(InputSpec(path))
    chosen = replace(SETTINGS, no_lookup=no_lookup, verified=setting)
    with structlog.testing.capture_logs() as logs:
        prepared_batches(source, chosen, Mode.RUN)
    assert [e["event"] for e in logs].count("rows_sent_unverified") == int(warned)


def test_undo_prepares_its_rows_from_the_result_file(tmp_path: Path) -> None:
    results = tmp_path / "results.csv"
    results.write_text(
        "row,loginId,phone,status,phone_before,verified_before\n"
        "1,a@x.com,+14155550100,updated,+14155550999,true\n"
        "2,b@x.com,+14155550101,unchanged,+14155550101,false\n"
    )
    batches, count = prepared_batches(open_results(results), SETTINGS, Mode.RUN)
    back, kept = rows_of(batches)
    assert count == 2
    assert isinstance(back, UpdateRequest)
    assert (back.phone, back.verified, back.expect_phone) == ("+14155550999", True, "+14155550100")
    assert isinstance(kept, RowResult) and kept.reason is Reason.NOT_UPDATED
