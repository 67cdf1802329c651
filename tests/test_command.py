"""A command, decided once: its mode, the reads before sending, its columns and identity."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from batchphone.config import Endpoint, Secret, Settings
from batchphone.errors import UsageError
from batchphone.models import LOOKUP_COLUMNS, PLAN_COLUMNS, RESULT_COLUMNS
from batchphone.modes.command import decide
from batchphone.modes.job import Job
from batchphone.remote.screen import ScreenRules
from batchphone.rows.prepare import Mode

SETTINGS = Settings()
ENDPOINT = Endpoint("P2project", "https://api.descope.com", Secret("K2key"))


def job(command: str = "run", **options: object) -> Job:
    return Job(command, Path("in.csv"), Path("out.csv"), **options)  # type: ignore[arg-type]


def mode_of(the_job: Job, settings: Settings) -> Mode:
    return decide(the_job, settings, ENDPOINT).mode


# -- the mode ------------------------------------------------------------------------------


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
    assert mode_of(job(command), replace(SETTINGS, dry_run=dry_run)) is mode


def test_allow_merge_and_the_batch_api_are_refused_together_when_sending() -> None:
    merging = replace(SETTINGS, allow_merge=True)
    with pytest.raises(
        UsageError, match="allow_merge=True cannot be used with api=batch"
    ) as caught:
        mode_of(job(api="batch"), merging)
    assert caught.value.setting == "allow_merge"
    # nothing is sent: nothing to refuse
    assert mode_of(job(api="batch"), replace(merging, dry_run=True)) is Mode.DRY_RUN
    assert mode_of(job("plan", api="batch"), merging) is Mode.PLAN
    assert mode_of(job(api="update"), merging) is Mode.RUN


@pytest.mark.parametrize(
    ("command", "dry_run"), [("run", True), ("validate", False), ("plan", False)]
)
def test_a_canary_is_refused_when_nothing_is_sent(command: str, dry_run: bool) -> None:
    with pytest.raises(UsageError, match=r"canary=\.\.\. reads back the updates it sent") as caught:
        mode_of(job(command, canary=5), replace(SETTINGS, dry_run=dry_run))
    assert caught.value.setting == "canary"


def test_a_canary_goes_with_a_run() -> None:
    assert mode_of(job(canary=5), SETTINGS) is Mode.RUN


# -- the screen: lookups by default, none with no_lookup ---------------------------------


def rules(command: str = "run", **settings: object) -> ScreenRules:
    chosen = replace(SETTINGS, **settings)  # type: ignore[arg-type]
    return decide(job(command), chosen, ENDPOINT).screen


def test_a_run_reads_every_user_first_by_default() -> None:
    assert rules() == ScreenRules(compare=True, guard=True, plan=False)


def test_no_lookup_reads_nothing_unless_the_batch_api_must_guard() -> None:
    assert rules(no_lookup=True) == ScreenRules()
    assert not rules(no_lookup=True).active
    # a batch patch has no failOnConflict: the phones are still checked against login ids
    batch = decide(job(api="batch"), replace(SETTINGS, no_lookup=True), ENDPOINT).screen
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


def test_a_command_that_calls_the_api_needs_a_target() -> None:
    for command in ("run", "plan", "undo"):
        with pytest.raises(UsageError, match="no target") as caught:
            decide(job(command), SETTINGS, None)
        assert caught.value.setting == "target"
    # a validate or a dry run calls nothing
    assert decide(job("validate"), SETTINGS, None).local
    assert decide(job(), replace(SETTINGS, dry_run=True), None).local


def test_the_columns_come_with_the_reads() -> None:
    assert decide(job(), SETTINGS, ENDPOINT).columns == RESULT_COLUMNS + LOOKUP_COLUMNS
    plan = decide(job("plan"), SETTINGS, ENDPOINT)
    assert plan.columns == RESULT_COLUMNS + LOOKUP_COLUMNS + PLAN_COLUMNS
    assert decide(job("validate"), SETTINGS, None).columns == RESULT_COLUMNS
    dry_undo = decide(job("undo"), replace(SETTINGS, dry_run=True), ENDPOINT)
    assert dry_undo.is_plan and not dry_undo.local and dry_undo.resumable
