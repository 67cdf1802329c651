"""A job: the options checked when it is made, and the rows it prepares."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import structlog

from batchphone.config import Settings
from batchphone.errors import UsageError
from batchphone.files.reader import InputSpec, open_input
from batchphone.models import Reason, RowResult, Status, UpdateRequest
from batchphone.modes.job import Job, prepared_batches
from batchphone.modes.reverse import open_results
from batchphone.rows.prepare import Mode, RowRules
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


# -- prepared_batches ----------------------------------------------------------------------


def rules(settings: Settings, mode: Mode) -> RowRules:
    return RowRules(mode=mode, verified=settings.verified)


def rows_of(batches: object) -> list[UpdateRequest | RowResult]:
    return [item for batch in batches for item in batch]  # type: ignore[attr-defined]


def test_input_rows_are_judged_lazily_and_counted(tmp_path: Path) -> None:
    path = write_input(tmp_path / "in.csv", [("a@x.com", "+14155550100"), ("", "+14155550101")])
    source = open_input(InputSpec(path))
    batches, count = prepared_batches(source, SETTINGS, rules(SETTINGS, Mode.RUN))
    assert count == 2
    first, second = rows_of(batches)
    assert isinstance(first, UpdateRequest) and first.phone == "+14155550100"
    assert isinstance(second, RowResult) and second.reason is Reason.EMPTY_LOGIN_ID


def test_the_limit_bounds_the_rows_and_the_count(tmp_path: Path) -> None:
    rows = [(f"u{i}@x.com", f"+1415555{i:04d}") for i in range(5)]
    source = open_input(InputSpec(write_input(tmp_path / "in.csv", rows)))
    batches, count = prepared_batches(
        source, replace(SETTINGS, limit=3), rules(SETTINGS, Mode.VALIDATE)
    )
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
        prepared_batches(source, chosen, rules(chosen, Mode.RUN))
    assert [e["event"] for e in logs].count("rows_sent_unverified") == int(warned)


def test_undo_prepares_its_rows_from_the_result_file(tmp_path: Path) -> None:
    results = tmp_path / "results.csv"
    results.write_text(
        "row,loginId,phone,status,phone_before,verified_before\n"
        "1,a@x.com,+14155550100,updated,+14155550999,true\n"
        "2,b@x.com,+14155550101,unchanged,+14155550101,false\n"
    )
    batches, count = prepared_batches(open_results(results), SETTINGS, rules(SETTINGS, Mode.RUN))
    back, kept = rows_of(batches)
    assert count == 2
    assert isinstance(back, UpdateRequest)
    assert (back.phone, back.verified, back.expect_phone) == ("+14155550999", True, "+14155550100")
    assert isinstance(kept, RowResult) and kept.reason is Reason.NOT_UPDATED
