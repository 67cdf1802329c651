"""The journal: append-only, 0600, torn last line recovered, identity checked, lock exclusive."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time
from dataclasses import replace
from pathlib import Path

import pytest

from batchphone.errors import OutputError, ResumeError
from batchphone.files.journal import (
    Journal,
    RunIdentity,
    iter_records,
    journal_path,
)
from batchphone.files.lock import RunLock, lock_path
from batchphone.models import Command, RowResult, Status

IDENTITY = RunIdentity(
    command=Command.RUN,
    input_name="users.csv",
    input_sha256="abc",
    project_id="P1",
    base_url="https://api.descope.com",
    login_id_column="loginId",
    phone_column="phone",
    default_region=None,
    verified=None,
    allow_merge=False,
    allow_remove=False,
    dry_run=False,
    no_lookup=False,
    api="update",
    batch_size=None,
)


def _result(row: int, status: Status = Status.UPDATED, attempts: int = 1) -> RowResult:
    return RowResult(
        row=row, login_id=f"u{row}", phone_input="+1", phone="+1", status=status, attempts=attempts
    )


def test_records_are_written_at_once_for_api_rows_and_file_is_0600(tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    journal = Journal.open(out, IDENTITY)
    journal.append(_result(1), ts=time.time(), urgent=True)
    # without close(): an urgent record must already be in the file (a kill -9 keeps it)
    assert [r["row"] for r in iter_records(journal_path(out))] == [1]
    assert stat.S_IMODE(os.stat(journal_path(out)).st_mode) == 0o600
    journal.close()


def test_local_rows_are_buffered_then_flushed(tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    journal = Journal.open(out, IDENTITY)
    journal.append(_result(1, Status.INVALID, attempts=0), ts=time.time(), urgent=False)
    assert list(iter_records(journal_path(out))) == []
    journal.flush()
    assert [r["status"] for r in iter_records(journal_path(out))] == ["invalid"]
    journal.close()


def test_resume_reads_state_and_cuts_a_torn_last_line(tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    journal = Journal.open(out, IDENTITY)
    journal.append(_result(1), ts=time.time(), urgent=True)
    journal.append(_result(2, Status.NOT_ATTEMPTED, attempts=0), ts=time.time(), urgent=True)
    journal.append(_result(3, Status.FAILED), ts=time.time(), urgent=True)
    journal.close()
    with journal_path(out).open("ab") as handle:
        handle.write(b'{"row": 4, "status": "upd')  # the crash happened mid-line
    resumed = Journal.open(out, IDENTITY)
    assert resumed.resumed
    assert resumed.state.is_final(1)
    assert not resumed.state.is_final(2)  # not_attempted is sent again
    assert resumed.state.is_final(3)
    assert not resumed.state.is_final(3, retry_failed=True)
    assert resumed.state.status(4) is None
    assert len(resumed.state.call_times) == 2  # rows 1 and 3 made calls, recently
    resumed.append(_result(4), ts=time.time(), urgent=True)
    resumed.close()
    rows = [r["row"] for r in iter_records(journal_path(out))]
    assert rows == [1, 2, 3, 4]  # the torn fragment is gone, the new line is whole


def test_damaged_middle_line_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    Journal.open(out, IDENTITY).close()
    with journal_path(out).open("ab") as handle:
        handle.write(b"garbage\n" + json.dumps(_result(1).to_record()).encode() + b"\n")
    with pytest.raises(ResumeError, match="line 2 is damaged"):
        Journal.open(out, IDENTITY)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"input_sha256": "other"}, "input file's content changed"),
        ({"project_id": "P2"}, "target project is another one"),
        ({"allow_merge": True}, "option allow_merge changed"),
    ],
)
def test_another_runs_journal_is_refused(
    tmp_path: Path, change: dict[str, object], words: str
) -> None:
    out = tmp_path / "results.csv"
    Journal.open(out, IDENTITY).close()
    with pytest.raises(ResumeError) as caught:
        Journal.open(out, replace(IDENTITY, **change))
    assert words in str(caught.value) and "restart=True" in str(caught.value)
    restarted = Journal.open(out, replace(IDENTITY, **change), restart=True)
    assert not restarted.resumed and restarted.state.records == 0
    restarted.close()


def test_dry_run_journal_is_replaced_by_a_real_run(tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    dry = Journal.open(out, replace(IDENTITY, dry_run=True))
    dry.append(_result(1, Status.WOULD_UPDATE, attempts=0), ts=time.time(), urgent=True)
    dry.close()
    real = Journal.open(out, IDENTITY)
    assert not real.resumed and real.state.status(1) is None
    real.close()


def test_a_symlink_for_the_lock_or_journal_is_refused_and_its_target_untouched(
    tmp_path: Path,
) -> None:
    out = tmp_path / "results.csv"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    lock_path(out).symlink_to(victim)
    with pytest.raises(OutputError, match=r"results\.csv\.lock: is a symbolic link"):
        RunLock(out).acquire()
    journal_path(out).symlink_to(victim)
    with pytest.raises(OutputError, match=r"results\.csv\.journal: is a symbolic link"):
        Journal.open(out, IDENTITY, restart=True)
    dangling = tmp_path / "other.csv"
    journal_path(dangling).symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError, match="is a symbolic link"):
        Journal.open(dangling, IDENTITY)
    assert not (tmp_path / "nowhere").exists()
    assert victim.read_text() == "precious\n"


def _run_journal(out: Path, *, dry_run: bool = False, status: Status = Status.UPDATED) -> None:
    journal = Journal.open(out, replace(IDENTITY, dry_run=dry_run))
    journal.append(_result(1, status, attempts=0 if dry_run else 1), ts=time.time(), urgent=True)
    journal.close()
    out.write_text("row,status\n1,updated\n")


def _digest(*paths: Path) -> list[str]:
    return [hashlib.sha256(path.read_bytes()).hexdigest() for path in paths]


@pytest.mark.parametrize(
    "other",
    [
        {"command": Command.VALIDATE, "dry_run": True},
        {"command": Command.PLAN, "dry_run": True},
        {"dry_run": True},
        {"input_sha256": "other"},
        {"command": Command.UNDO},
    ],
)
@pytest.mark.parametrize("replaceable", [True, False])
def test_a_journal_that_changed_users_is_never_replaced(
    tmp_path: Path, other: dict[str, object], replaceable: bool
) -> None:
    out = tmp_path / "results.csv"
    _run_journal(out)
    before = _digest(out, journal_path(out))
    identity = replace(IDENTITY, **other)
    with pytest.raises(ResumeError) as caught:
        Journal.open(
            out,
            identity,
            replaceable=replaceable,
            resume=other.get("command") is not Command.VALIDATE,
        )
    message = str(caught.value)
    assert "\n" not in message
    assert "is the record of a 'run' of users.csv that changed users" in message
    assert "restart=True" in message
    assert _digest(out, journal_path(out)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.csv.journal"]


def test_a_journal_whose_calls_failed_is_kept_too(tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    _run_journal(out, status=Status.FAILED)  # a timeout may still have reached the user
    with pytest.raises(ResumeError, match="changed users"):
        Journal.open(out, replace(IDENTITY, dry_run=True), replaceable=True)


def test_restart_moves_a_journal_that_changed_users_aside(tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    _run_journal(out)
    before = _digest(out, journal_path(out))
    first = Journal.open(out, IDENTITY, restart=True)
    assert first.state.records == 0 and not first.resumed
    first.append(_result(1), ts=time.time(), urgent=True)  # the new run changes users too
    first.close()
    stamp = first.moved[0].name.split(".moved-")[1].split(".")[0]
    assert re.fullmatch(r"\d{8}T\d{6}Z", stamp)
    assert [p.name for p in first.moved] == [
        f"results.moved-{stamp}.csv",
        f"results.moved-{stamp}.csv.journal",
    ]
    assert _digest(*first.moved) == before  # moved, byte for byte
    # a second restart within the same second never overwrites the first pair
    out.write_text("row,status\n1,updated\n")
    second = Journal.open(out, IDENTITY, restart=True)
    second.close()
    assert len(set(first.moved) | set(second.moved)) == 4
    assert all(path.exists() for path in (*first.moved, *second.moved))
    assert _digest(*first.moved) == before


def test_a_journal_that_changed_nothing_may_be_replaced(tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    _run_journal(out, dry_run=True, status=Status.WOULD_UPDATE)
    plan = Journal.open(
        out, replace(IDENTITY, command=Command.PLAN, dry_run=True), replaceable=True
    )
    plan.close()
    assert plan.moved == () and not plan.resumed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.csv.journal"]


def test_the_same_run_resumes_its_journal(tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    _run_journal(out)
    resumed = Journal.open(out, IDENTITY)
    assert resumed.resumed and resumed.state.is_final(1)
    resumed.close()


def _header(out: Path) -> dict[str, object]:
    header: dict[str, object] = json.loads(journal_path(out).read_bytes().splitlines()[0])
    return header


def test_the_identity_is_stored_as_the_journal_header_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    identity = replace(IDENTITY, sheet="Sheet2", api="batch", batch_size=50)
    journal = Journal.open(out, identity)
    journal.append(_result(1), ts=time.time(), urgent=True)
    journal.close()
    stored = _header(out)["identity"]
    assert isinstance(stored, dict) and RunIdentity.from_header(stored) == identity
    assert stored == {
        "command": "run",
        "input_name": "users.csv",
        "input_sha256": "abc",
        "project_id": "P1",
        "base_url": "https://api.descope.com",
        "login_id_column": "loginId",
        "phone_column": "phone",
        "default_region": None,
        "verified": None,
        "allow_merge": False,
        "allow_remove": False,
        "dry_run": False,
        "no_lookup": False,
        "api": "batch",
        "batch_size": 50,
        "sheet": "Sheet2",
    }
    resumed = Journal.open(out, identity)
    assert resumed.resumed and resumed.state.is_final(1)
    resumed.close()
    # the first sheet of the same workbook is another input: its journal is kept, not resumed
    with pytest.raises(ResumeError, match=r"'run' of users.csv that changed users \(option sheet"):
        Journal.open(out, replace(identity, sheet=None))


def test_a_journal_from_before_the_sheet_option_still_resumes(tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    # the header an older batchphone wrote: no "sheet" key at all
    old = {key: value for key, value in IDENTITY.header().items() if key != "sheet"}
    header = {"format": "batchphone-journal", "version": 1, "identity": old, "created": 1.0}
    row = {**_result(1).to_record(), "ts": time.time()}
    journal_path(out).write_text(json.dumps(header) + "\n" + json.dumps(row) + "\n")
    assert "sheet" not in IDENTITY.header()  # unset: left out, as those journals have it
    resumed = Journal.open(out, IDENTITY)
    assert resumed.resumed and resumed.state.is_final(1)
    resumed.close()


CORRECTED = replace(IDENTITY, base_url="http://127.0.0.1:8765")


def _journal_of(out: Path, records: list[dict[str, object]]) -> None:
    """A run's journal holding ``records`` as written (raw: statuses the journal may not know)."""
    Journal.open(out, IDENTITY).close()
    with journal_path(out).open("ab") as handle:
        for record in records:
            handle.write(json.dumps(record).encode() + b"\n")
    out.write_text("row,status\n")


def _unsent(row: int, reason: str = "UNREACHABLE") -> dict[str, object]:
    return {"row": row, "status": "not_attempted", "reason": reason, "attempts": 0, "ts": 1.0}


def _intent(row: int) -> dict[str, object]:
    """A write-ahead record: the before-image and the intended state, before the call."""
    return {"row": row, "status": "unsettled", "phone_before": "+1", "ts": 1.0}


@pytest.mark.parametrize(
    "records",
    [
        [],  # the first call (the license's) found nothing listening: no row was journaled
        [{"call": 1.0}, _unsent(1), _unsent(2)],
        [_intent(1), _intent(2), _unsent(1), {"call": 1.0}, _unsent(2)],
        [{"row": 3, "status": "invalid", "reason": "TOO_SHORT", "ts": 1.0}, _unsent(1)],
    ],
    ids=["empty", "unreachable rows", "intents whose calls never left", "local rows"],
)
def test_a_journal_whose_calls_reached_no_server_gives_way_to_the_corrected_url(
    tmp_path: Path, records: list[dict[str, object]]
) -> None:
    out = tmp_path / "results.csv"
    _journal_of(out, records)
    corrected = Journal.open(out, CORRECTED)
    corrected.close()
    assert not corrected.resumed and corrected.state.records == 0 and corrected.moved == ()
    assert _header(out)["identity"] == CORRECTED.header()
    # the same journal is still refused to anything else that differs (another input)
    _journal_of(out, records)
    with pytest.raises(ResumeError, match="belongs to another run"):
        Journal.open(out, replace(CORRECTED, input_sha256="other"))


@pytest.mark.parametrize(
    ("records", "words"),
    [
        # a server answered (a read judged the row): not a wrong URL, it stays as it is
        ([{"row": 1, "status": "unchanged", "ts": 1.0}], "belongs to another run"),
        ([_unsent(1, "UNAUTHORIZED") | {"http_status": 401}], "belongs to another run"),
        # a change is a change whatever comes after it
        ([{"row": 1, "status": "updated", "attempts": 1, "ts": 1.0}, _unsent(1)], "changed users"),
        ([{"row": 1, "status": "failed", "attempts": 5, "ts": 1.0}], "changed users"),
        # an intent counts until a record of its row says the call never left
        ([_intent(1)], "changed users"),
        ([_intent(1), _unsent(2)], "changed users"),
        ([_intent(1), _unsent(1, "INTERRUPTED")], "changed users"),
        ([_intent(1), _unsent(1), _intent(1)], "changed users"),
    ],
)
def test_a_journal_with_answers_or_changes_is_not_given_to_another_url(
    tmp_path: Path, records: list[dict[str, object]], words: str
) -> None:
    out = tmp_path / "results.csv"
    _journal_of(out, records)
    before = _digest(out, journal_path(out))
    with pytest.raises(ResumeError, match=words):
        Journal.open(out, CORRECTED)
    assert _digest(out, journal_path(out)) == before


def test_the_record_of_a_command_reads_as_english() -> None:
    from batchphone.files.journal import _kept

    undo = {"command": "undo", "input_name": "r.csv"}
    assert "is the record of an 'undo' of r.csv that changed users" in _kept("j", undo, undo)
    assert "rerun that undo to resume it" in _kept("j", undo, undo)
    unknown = _kept("j", {}, {"command": "run"})
    assert "the record of an unknown command" in unknown
    assert "rerun that command to resume it" in unknown
