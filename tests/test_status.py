"""status.py and ``batchphone status OUT``: a run's state from its journal, read-only."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import polars as pl
import pytest
from click.testing import CliRunner

import batchphone
from batchphone.cli import main
from batchphone.files import lock as lock_module
from batchphone.files.lock import RunLock
from batchphone.modes.status import read_status, with_eta
from batchphone.render import status_lines

HOLDER = f"pid {os.getpid()} on {socket.gethostname()}"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def finished(samples: Path, tmp_path: Path) -> tuple[Path, batchphone.Summary]:
    """A finished run of the samples on the embedded emulator: its result file and summary."""
    out = tmp_path / "results.csv"
    summary = batchphone.run(samples / "phones.csv", out=out, target=batchphone.Target.emulator())
    return out, summary


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_a_finished_run(finished: tuple[Path, batchphone.Summary]) -> None:
    out, summary = finished
    found = read_status(out)
    assert found.command == "run" and found.input_name == "phones.csv"
    assert found.project_id == "Pbatchphone0emulator0rehearsal00"
    assert found.counts == summary.counts
    assert found.rows_final == summary.input_rows
    assert found.calls == summary.calls  # every call leaves one call record
    assert found.last_call_ts is not None and found.last_call_ts <= time.time()
    assert (found.locked, found.holder) == (False, None)
    assert read_status(out.with_name("results.csv.journal")) == found  # the journal itself


def test_status_changes_nothing(
    finished: tuple[Path, batchphone.Summary], samples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Byte for byte and mtime: the journal, the lock and the result file, with the lock held
    and not, on both ways of telling whether it is held."""
    out, _ = finished
    folder = out.parent
    before = _snapshot(folder)
    read_status(out)
    lock = RunLock(out)
    lock.acquire()
    try:
        held = _snapshot(folder)
        assert read_status(out).locked
        monkeypatch.setattr(lock_module, "PROC_LOCKS", folder / "no-proc-locks")
        assert read_status(out).locked
        assert _snapshot(folder) == held
    finally:
        lock.release()
    monkeypatch.undo()
    monkeypatch.chdir(folder)
    after_release = _snapshot(folder)
    result = CliRunner().invoke(main, ["status", str(out), "--input", str(samples / "phones.csv")])
    assert result.exit_code == 0, result.output
    assert _snapshot(folder) == after_release
    assert before["results.csv.journal"] == after_release["results.csv.journal"]


def _journal(path: Path, records: list[dict[str, object]], tail: bytes = b"") -> None:
    header = {
        "format": "batchphone-journal",
        "version": 1,
        "identity": {"command": "run", "input_name": "in.csv", "project_id": "P2x"},
        "created": 1_800_000_000.0,
    }
    lines = [orjson.dumps(record) + b"\n" for record in [header, *records]]
    path.write_bytes(b"".join(lines) + tail)


def test_a_row_counts_by_its_last_record_and_unknown_kinds_are_skipped(tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    _journal(
        out.with_name("results.csv.journal"),
        [
            {"start": 1_800_000_001.0, "id": "c1"},  # a call starts (a later version's record)
            {"call": 1_800_000_002.0},
            {"row": 1, "status": "updated", "attempts": 1, "ts": 1_800_000_002.0},
            {"row": 2, "status": "unsettled", "attempts": 1, "ts": 1_800_000_003.0},
            {"row": 3, "status": "unsettled", "attempts": 1, "ts": 1_800_000_003.0},
            {"start": 1_800_000_004.0, "id": "c2", "row": 3},
            {"call": 1_800_000_005.0},
            {"row": 3, "status": "updated", "attempts": 1, "ts": 1_800_000_005.0},
            {"row": 4, "status": "invalid", "reason": "TOO_SHORT", "attempts": 0},
            {"kind": "something new", "row": "x"},
            [1, 2, 3],
        ],
        tail=b'{"row": 5, "status": "upd',  # torn: being written
    )
    found = read_status(out)
    assert found.counts == {"updated": 2, "unsettled": 1, "invalid": 1}
    assert found.rows_final == 3  # an unsettled row is not final
    assert found.calls == 2 and found.last_call_ts == 1_800_000_005.0
    eta = with_eta(found, 100, rate_calls=60, rate_period=60.0)
    # 2 calls for 3 final rows: 97 rows left need 65 calls, a call a second
    assert (eta.input_rows, eta.eta_s, eta.rate) == (100, 65.0, "60/60")
    unknown = with_eta(found, None, rate_calls=60, rate_period=60.0)
    assert unknown.eta_s is None


def test_rows_in_flight_at_a_kill_are_not_listed_as_final_and_the_next_step_is_named(
    tmp_path: Path,
) -> None:
    out = tmp_path / "results.csv"
    _journal(
        out.with_name("results.csv.journal"),
        [
            {"row": 1, "status": "updated", "attempts": 1, "ts": 1_800_000_002.0},
            {"row": 2, "status": "unsettled", "reason": "IN_FLIGHT", "ts": 1_800_000_003.0},
            {"row": 3, "status": "unsettled", "reason": "IN_FLIGHT", "ts": 1_800_000_003.0},
        ],
    )
    text = CliRunner().invoke(main, ["status", str(out)]).stdout
    lines = text.splitlines()
    final = lines.index(next(line for line in lines if "rows final" in line))
    # under "rows final 1": only the final rows; the unsettled ones apart, with what to do
    assert lines[final].split()[-1] == "1" and "updated" in lines[final + 1]
    assert lines[final + 2].split() == ["not", "final", "2"]
    assert lines[final + 3].split() == ["unsettled", "2"]
    assert f"batchphone undo {out} --out" in lines[-1] and "rerun the same command" in lines[-1]


def test_the_cli_prints_it_and_json_for_scripts(
    finished: tuple[Path, batchphone.Summary], samples: Path
) -> None:
    out, summary = finished
    result = CliRunner().invoke(
        main, ["status", str(out), "--json", "--input", str(samples / "phones.csv")]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["command"] == "run" and document["input"] == "phones.csv"
    assert document["counts"] == dict(sorted(summary.counts.items()))
    assert document["rows_final"] == document["input_rows"] == 24
    assert document["eta_s"] == 0.0 and document["rate"] == "500/60"
    assert document["locked"] is False and document["holder"] is None
    text = CliRunner().invoke(main, ["status", str(out), "--rate", "10/60"]).stdout
    assert "run of phones.csv" in text and "Pbatchphone0emulator0rehearsal00" in text
    assert "rows final   24" in text and "lock         not held" in text
    # the input is not beside OUT nor here: no guess, and no other file of that name
    assert "ETA          unknown" in text
    (out.parent / "phones.csv").write_text("loginId,phone\nsomeone,+14155550100\n")
    text = CliRunner().invoke(main, ["status", str(out)]).stdout
    assert "ETA          unknown" in text  # same name, other content: not the run's input


def test_no_journal_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["status", str(tmp_path / "nothing.csv")])
    assert result.exit_code == 2
    assert result.stderr.startswith("batchphone: error: ")
    assert "no journal" in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.slow
def test_a_live_run_started_by_another_process(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    rows = 60
    pl.DataFrame(
        {
            "loginId": [f"user{i}@example.com" for i in range(rows)],
            "phone": [f"+1415555{i:04d}" for i in range(rows)],
        }
    ).write_csv(source)
    out = tmp_path / "results.csv"
    argv = [sys.executable, "-m", "batchphone", "run", str(source), "--emulator"]
    argv += ["--out", str(out), "--rate", "10/1", "--no-lookup", "--log-format", "json"]
    with subprocess.Popen(argv, cwd=tmp_path, stderr=subprocess.PIPE, text=True) as process:
        deadline = time.monotonic() + 30
        found = None
        while time.monotonic() < deadline:
            if out.with_name("results.csv.journal").exists():
                found = read_status(out)
                if found.calls >= 5:
                    break
            time.sleep(0.1)
        result = CliRunner().invoke(main, ["status", str(out), "--json", "--rate", "10/1"])
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert found is not None and found.locked
    assert found.holder == f"pid {process.pid} on {socket.gethostname()}"
    document = json.loads(result.stdout)
    assert document["locked"] and document["input_rows"] == rows  # found beside OUT
    assert 0 < document["rows_final"] < rows and document["eta_s"] > 0
    assert read_status(out).locked is False  # the process ended, its lock with it


def test_a_stopped_run_counts_the_rows_it_never_reached_as_its_result_file_does(
    tmp_path: Path,
) -> None:
    """A run that stopped journals only the rows that reached a worker; the result file lists
    every other row ``not_attempted`` too, and so does ``status`` once the input is counted."""
    source = tmp_path / "in.csv"
    source.write_text(
        "loginId,phone\n" + "".join(f"u{i}@x.org,+1415555{i:04d}\n" for i in range(9))
    )
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    target = batchphone.Target(
        project_id="P2abcdefghijklmnopqrstuvwxyz",
        management_key=batchphone.Secret("K"),
        base_url=f"http://127.0.0.1:{port}",
    )
    out = tmp_path / "results.csv"
    summary = batchphone.run(source, out=out, target=target)
    assert summary.exit_code == 3 and summary.counts == {"not_attempted": 9}
    found = with_eta(read_status(out), 9, rate_calls=60, rate_period=60.0)
    assert found.counts == summary.counts and found.rows_final == 0
    assert "    not_attempted          9" in status_lines(found)
    lock = RunLock(out)
    lock.acquire()
    try:  # a live run has not reached them yet: they are not counted as stopped
        live = with_eta(read_status(out), 9, rate_calls=60, rate_period=60.0)
        assert live.counts.get("not_attempted", 0) < 9
    finally:
        lock.release()


def test_the_eta_is_at_the_rate_the_run_was_started_with(
    samples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A nightly sync runs with ``--rate 300/60``; support asks ``status`` without knowing it:
    the ETA is at the run's own rate, not at the default 500/60 (``--rate`` still decides)."""
    out = tmp_path / "results.csv"
    phones = samples / "phones.csv"
    batchphone.run(phones, out=out, target=batchphone.Target.emulator(), rate="30/60")
    monkeypatch.setenv("BATCHPHONE_RATE", "400/60")  # the asker's own settings
    document = json.loads(
        CliRunner().invoke(main, ["status", str(out), "--json", "--input", str(phones)]).stdout
    )
    assert document["rate"] == "30/60"
    asked = CliRunner().invoke(
        main, ["status", str(out), "--rate", "10/60", "--input", str(phones)]
    )
    assert "at a budget of 10/60" in asked.stdout or "none: every row is final" in asked.stdout
    assert (
        json.loads(
            CliRunner().invoke(main, ["status", str(out), "--json", "--rate", "10/60"]).stdout
        )["rate"]
        == "10/60"
    )
