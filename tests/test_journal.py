"""The journal: append-only, 0600, torn last line recovered, identity checked, lock exclusive."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchphone.errors import OutputError, ResumeError
from batchphone.journal import Journal, RunLock, iter_records, journal_path
from batchphone.models import RowResult, Status

IDENTITY = {"command": "run", "input_sha256": "abc", "project_id": "P1", "dry_run": False}


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
        Journal.open(out, {**IDENTITY, **change})
    assert words in str(caught.value) and "--restart" in str(caught.value)
    restarted = Journal.open(out, {**IDENTITY, **change}, restart=True)
    assert not restarted.resumed and restarted.state.records == 0
    restarted.close()


def test_dry_run_journal_is_replaced_by_a_real_run(tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    dry = Journal.open(out, {**IDENTITY, "dry_run": True})
    dry.append(_result(1, Status.WOULD_UPDATE, attempts=0), ts=time.time(), urgent=True)
    dry.close()
    real = Journal.open(out, IDENTITY)
    assert not real.resumed and real.state.status(1) is None
    real.close()


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time; from pathlib import Path; from batchphone.journal import RunLock;"
            "lock = RunLock(Path(sys.argv[1])); lock.acquire();"
            "print('locked', flush=True); time.sleep(60)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match="being written by another batchphone run"):
            RunLock(out).acquire()
    finally:
        holder.kill()  # like kill -9: the kernel drops its lock
        holder.wait()
    lock = RunLock(out)
    lock.acquire()  # the stale lock of the dead process is taken over
    lock.release()
    assert not lock.path.exists()
