"""Every run can be undone after kill -9 and a second Ctrl-C with calls in flight (real processes).

The emulator runs in a thread of this process (it outlives every run); each run is a real
``batchphone`` process (forked from a zygote that imported the CLI once: tests/zygote.py) that
is killed at random moments (seeded) while updates or patches are on the wire
(``write_latency``: applied on arrival, answered later). After the last run, or straight after
the second Ctrl-C, ``undo`` must put every user back exactly as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner

from batchphone.cli import main
from batchphone.emulator import Emulator, Faults, ProjectSettings
from batchphone.emulator.server import ServerThread
from batchphone.files.journal import CALL_KEY, START_KEY, journal_path
from tests.zygote import Forked

pytestmark = pytest.mark.slow

PROJECT = "P2batchphoneWriteAheadKill00000"
KEY = "K2-write-ahead-kill-key-00000000"
ROWS = 150
PATCH = "/v1/mgmt/user/patch/batch"
UPDATE = "/v1/mgmt/user/update/phone"


def seeded_users() -> list[dict[str, Any]]:
    rng = random.Random(16)
    users = []
    for i in range(ROWS):
        user: dict[str, Any] = {"loginId": f"user{i}@example.com"}
        if rng.random() < 0.8:
            user["phone"] = f"+1415555{i:04d}"
            user["verifiedPhone"] = rng.random() < 0.5
        users.append(user)
    return users


@pytest.fixture
def served() -> Iterator[tuple[Emulator, str]]:
    emulator = Emulator(
        projects=[
            ProjectSettings(
                project_id=PROJECT,
                management_key=KEY,
                users=seeded_users(),
                rate_limit=5000,
                rate_window=1.0,
            )
        ],
        faults=Faults(seed=5, latency=0.01, write_latency=0.15),
    )
    with ServerThread(emulator, port=0) as base_url:
        yield emulator, base_url


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "in.csv"
    rng = random.Random(17)
    pl.DataFrame(
        {
            "loginId": [f"user{i}@example.com" for i in range(ROWS)],
            "phone": [f"+1415666{i:04d}" for i in range(ROWS)],
            "verified": [rng.choice(["true", "false", ""]) for _ in range(ROWS)],
        }
    ).write_csv(path)
    return path


def state(emulator: Emulator) -> dict[str, tuple[str, bool]]:
    return {
        u["loginIds"][0]: (u.get("phone") or "", bool(u.get("verifiedPhone")))
        for u in emulator.users(PROJECT)
    }


def batchphone(base_url: str, *args: str, cwd: Path) -> Forked:
    """``batchphone ARGS --log-format json`` in a process of its own, in the test's folder."""
    env = {
        **os.environ,
        "DESCOPE_PROJECT_ID": PROJECT,
        "DESCOPE_MANAGEMENT_KEY": KEY,
        "DESCOPE_BASE_URI": base_url,
    }
    return Forked("batchphone", [*args, "--log-format", "json"], env, cwd)


def after_kills(base_url: str, *args: str, cwd: Path) -> tuple[int, str]:
    """A command run once the kills are over, in this process: the same CLI, without paying
    a new interpreter's start-up (its exit code, and its JSON log lines)."""
    env = {
        "DESCOPE_PROJECT_ID": PROJECT,
        "DESCOPE_MANAGEMENT_KEY": KEY,
        "DESCOPE_BASE_URI": base_url,
    }
    with contextlib.chdir(cwd):  # the test's own folder: no config.toml of another's
        result = CliRunner().invoke(main, [*args, "--log-format", "json"], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result
    return result.exit_code, result.stderr


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def writes(emulator: Emulator) -> int:
    requests = emulator.stats(PROJECT).requests
    return sum(n for (path, _), n in requests.items() if path in (UPDATE, PATCH))


def sending(emulator: Emulator, process: Forked, sent: int) -> Callable[[], bool]:
    """True once ``process`` has made a write beyond the first ``sent`` (or has ended)."""
    return lambda: writes(emulator) > sent or process.poll() is not None


def in_flight(out: Path) -> int:
    """Calls the journal of ``out`` says were started and not answered (so far)."""
    started, answered = set(), set()
    path = journal_path(out)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # being written
        record = json.loads(line)
        if START_KEY in record:
            started.add(record["id"])
        elif CALL_KEY in record:
            answered.add(record["id"])
    return len(started - answered)


def undo_everything(base_url: str, out: Path, *extra: str) -> tuple[int, str]:
    """Undo the run of ``out`` into ``undo.csv`` beside it, once the kills are over."""
    undo = out.with_name("undo.csv")
    return after_kills(base_url, "undo", str(out), "--out", str(undo), *extra, cwd=out.parent)


MODES = {
    "update": ["--concurrency", "8", "--rate", "200/1"],
    "batch": ["--api", "batch", "--batch-size", "10", "--concurrency", "2", "--rate", "200/1"],
}


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_kill_9_with_calls_in_flight_then_resume_then_undo(
    served: tuple[Emulator, str], source: Path, tmp_path: Path, mode: str, seed: int
) -> None:
    emulator, base_url = served
    before = state(emulator)
    out = tmp_path / "results.csv"
    command = ["run", str(source), "--out", str(out), *MODES[mode]]
    rng = random.Random(seed)
    kills = 0
    for _ in range(3):
        sent = writes(emulator)
        process = batchphone(base_url, *command, cwd=tmp_path)
        wait_for(sending(emulator, process, sent))
        time.sleep(rng.uniform(0.0, 0.6))  # calls applied and in flight, answers pending
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.communicate(timeout=60)
    assert kills >= 2
    emulator.set_faults(Faults(seed=5, latency=0.01))  # the kills are over: answers at once
    code, stderr = after_kills(base_url, *command, cwd=tmp_path)
    assert code == 0, stderr
    rows = pl.read_csv(out, infer_schema=False)
    assert rows.height == ROWS
    after = state(emulator)
    changed = [login for login in before if after[login] != before[login]]
    statuses = dict(zip(rows["loginId"], rows["status"], strict=True))
    # a user the runs changed is never `unchanged` in the record: undo must know it
    assert all(statuses[login] == "updated" for login in changed)
    code, stderr = undo_everything(base_url, out)
    assert code == 1  # the users that had no phone: undo names them and leaves them
    undone = pl.read_csv(out.with_name("undo.csv"), infer_schema=False)
    skipped = set(undone.filter(pl.col("status") == "skipped")["loginId"])
    assert skipped == {login for login in changed if before[login][0] == ""}
    assert set(undone.filter(pl.col("status") == "skipped")["reason"]) == {"EMPTY_PHONE"}
    now = state(emulator)
    assert {login: now[login] for login in before if login not in skipped} == {
        login: before[login] for login in before if login not in skipped
    }


@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_second_ctrl_c_cancels_calls_in_flight_and_undo_restores_them(
    served: tuple[Emulator, str], source: Path, tmp_path: Path, mode: str
) -> None:
    emulator, base_url = served
    emulator.set_faults(Faults(seed=5, latency=0.01, write_latency=3.0))  # slow patches
    before = state(emulator)
    out = tmp_path / "results.csv"
    process = batchphone(
        base_url, "run", str(source), "--out", str(out), *MODES[mode], cwd=tmp_path
    )
    # writes on the wire in every lane (batch mode has 2), their answers held 3 s
    wait_for(lambda: writes(emulator) >= (2 if mode == "batch" else 4))
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)  # cancel the calls on the wire
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    rows = pl.read_csv(out, infer_schema=False)
    assert rows.height == ROWS
    after = state(emulator)
    changed = {login for login in before if after[login] != before[login]}
    assert changed, "no call was applied before the second Ctrl-C: the test tests nothing"
    statuses = dict(zip(rows["loginId"], rows["status"], strict=True))
    # applied, answer never read: unsettled with its before-image, never not_attempted
    assert {statuses[login] for login in changed} <= {"unsettled", "updated"}
    assert "unsettled" in {statuses[login] for login in changed}
    emulator.set_faults(Faults(seed=5, latency=0.01))
    code, stderr = undo_everything(base_url, out, "--allow-remove")
    assert code == 0, stderr
    assert state(emulator) == before


@pytest.mark.parametrize("mode", sorted(MODES))
def test_undo_straight_after_kill_9_reads_the_journal_and_sends_nothing_new(
    served: tuple[Emulator, str], source: Path, tmp_path: Path, mode: str
) -> None:
    """A run killed because it was wrong is rolled back without resuming it first (which
    would send the rows it had not reached): with no result file yet, undo reads the journal."""
    emulator, base_url = served
    before = state(emulator)
    out = tmp_path / "results.csv"
    process = batchphone(
        base_url, "run", str(source), "--out", str(out), *MODES[mode], cwd=tmp_path
    )
    wait_for(lambda: writes(emulator) >= 6 or process.poll() is not None)
    time.sleep(0.1)  # calls applied and in flight, answers pending
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert not out.exists()  # the case under test: the run never wrote its result file
    changed = {login for login in before if state(emulator)[login] != before[login]}
    assert changed and len(changed) < ROWS
    emulator.set_faults(Faults(seed=5, latency=0.01))  # the kills are over: answers at once
    code, stderr = undo_everything(base_url, out, "--allow-remove")
    assert code == 0, stderr
    assert "undo_from_journal" in stderr
    assert state(emulator) == before
    undone = pl.read_csv(tmp_path / "undo.csv", infer_schema=False)
    assert changed <= set(undone.filter(pl.col("status") == "updated")["loginId"])
    # the undo of that undo puts the killed run's changes back, nothing more
    code, stderr = after_kills(
        base_url,
        "undo",
        str(tmp_path / "undo.csv"),
        "--out",
        str(tmp_path / "redo.csv"),
        "--allow-remove",
        cwd=tmp_path,
    )
    assert code == 0, stderr
    assert {login for login in before if state(emulator)[login] != before[login]} == changed


def test_undo_after_a_resume_killed_by_kill_9_reads_past_the_older_result_file(
    served: tuple[Emulator, str], source: Path, tmp_path: Path
) -> None:
    """Ctrl-C writes a result file; the resume is then killed before writing its own: the
    file on disk lacks the rows the resume changed, the journal has them."""
    emulator, base_url = served
    before = state(emulator)
    out = tmp_path / "results.csv"
    command = ["run", str(source), "--out", str(out), *MODES["update"]]
    process = batchphone(base_url, *command, cwd=tmp_path)
    wait_for(lambda: writes(emulator) >= 6 or process.poll() is not None)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    assert process.returncode == 130 and out.exists()
    sent = writes(emulator)
    process = batchphone(base_url, *command, cwd=tmp_path)
    wait_for(lambda: writes(emulator) >= sent + 12 or process.poll() is not None)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    emulator.set_faults(Faults(seed=5, latency=0.01))  # the kills are over: answers at once
    code, stderr = undo_everything(base_url, out, "--allow-remove")
    assert code == 0, stderr
    assert state(emulator) == before


def test_undo_refuses_the_journal_of_a_run_still_writing_it(
    served: tuple[Emulator, str], source: Path, tmp_path: Path
) -> None:
    emulator, base_url = served
    emulator.set_faults(Faults(seed=5, latency=0.01, write_latency=1.0))
    out = tmp_path / "results.csv"
    command = ["run", str(source), "--out", str(out), *MODES["update"]]
    process = batchphone(base_url, *command, cwd=tmp_path)
    try:
        wait_for(lambda: writes(emulator) >= 2)
        undo_args = ["undo", str(out), "--out", str(tmp_path / "undo.csv")]
        undo = batchphone(base_url, *undo_args, cwd=tmp_path)
        _, stderr = undo.communicate(timeout=60)
        writes_during = writes(emulator)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    assert undo.returncode == 2
    assert "a run is writing it now (pid" in stderr
    assert "undo_from_journal" not in stderr  # no "the run was killed" while it runs
    assert writes_during >= 2


def test_a_restart_after_kill_9_counts_the_calls_that_were_in_flight(tmp_path: Path) -> None:
    """The calls on the wire at a kill were never answered, so never journaled as answered:
    their start records make the restart's limiter wait for them (no 429, no block)."""
    # 28 rows left after the kill: more than the window's 20, so a restart that forgot the 8
    # calls in flight would send 28 in one window and meet a 429 (it starts well within the
    # window: a fork, no interpreter start-up; calls take 0.2 s, time out after 1 s)
    users = [{"loginId": f"user{i}@example.com"} for i in range(36)]
    project = ProjectSettings(
        project_id=PROJECT,
        management_key=KEY,
        users=users,
        rate_limit=20,
        rate_window=1.5,
        penalty=30.0,
    )
    emulator = Emulator(projects=[project], faults=Faults(seed=1, latency=0.2))
    source = tmp_path / "in.csv"
    pl.DataFrame(
        {"loginId": [u["loginId"] for u in users], "phone": [f"+1415666{i:04d}" for i in range(36)]}
    ).write_csv(source)
    out = tmp_path / "r.csv"
    command = ["run", str(source), "--out", str(out), "--no-lookup", "--rate", "20/1.5"]
    command += ["--budget-store", "none", "--concurrency", "8", "--timeout", "1"]
    with ServerThread(emulator, port=0) as base_url:
        process = batchphone(base_url, *command, cwd=tmp_path)
        wait_for(lambda: in_flight(out) >= 8)  # 8 updates on the wire, none answered yet
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
        restart = batchphone(base_url, *command, cwd=tmp_path)
        _, stderr = restart.communicate(timeout=120)
    assert restart.returncode == 0, stderr
    stats = emulator.stats(PROJECT)
    assert stats.rate_limited == 0 and stats.blocks == 0
    assert stats.max_window_calls <= 20
