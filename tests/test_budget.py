"""The shared budget: its rule on a fake clock, the file store across real processes, and the
Redis store against a real ``redis-server`` (started here on a free loopback port)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import batchphone
from batchphone import Secret, Target
from batchphone.cli import main
from batchphone.config import Settings, load_settings
from batchphone.emulator import Emulator, ProjectSettings, load_users
from batchphone.emulator.server import ServerThread
from batchphone.errors import UsageError
from batchphone.models import RowResult
from batchphone.progress import NullProgress
from batchphone.remote.budget import (
    FileBudget,
    RedisBudget,
    default_state_dir,
    open_budget,
    redact,
)
from tests.zygote import Forked

ROOT = Path(__file__).resolve().parent.parent


class Tick:
    """A wall clock that moves only when told."""

    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def runs(directory: Path, clock: Tick, n: int, period: float = 60.0) -> list[FileBudget]:
    return [
        FileBudget(directory, "P1", period=period, clock=clock, heartbeat=False) for _ in range(n)
    ]


# -- the rule, on a fake clock ---------------------------------------------------------------


def test_a_slot_is_held_until_given_back_and_frees_one_window_later(tmp_path: Path) -> None:
    clock = Tick()
    (a,) = runs(tmp_path, clock, 1)
    first, second = a.take(2, 60.0)[0], a.take(2, 60.0)[0]
    assert first and second
    assert a.take(2, 60.0)[0] is None  # both held
    clock.t += 100.0  # longer than a window: held slots do not expire while their run beats
    a.beat()
    assert a.take(2, 60.0)[0] is None
    a.release(first)
    clock.t += 59.0
    a.beat()
    assert a.take(2, 60.0) == (None, pytest.approx(1.0))
    clock.t += 1.0
    assert a.take(2, 60.0)[0] is not None


def test_runs_on_one_project_share_the_budget_evenly(tmp_path: Path) -> None:
    clock = Tick()
    a, b = runs(tmp_path, clock, 2)
    for _ in range(4):
        a.release(a.take(4, 60.0)[0] or "")  # alone: the whole budget
    assert b.take(4, 60.0)[0] is None  # the window is spent, whoever spent it
    clock.t += 60.0
    a.beat()
    b.beat()
    # both ask now: two slots each
    assert [b.take(4, 60.0)[0] is not None for _ in range(3)] == [True, True, False]
    assert [a.take(4, 60.0)[0] is not None for _ in range(3)] == [True, True, False]
    b.close()  # a run that ends leaves its share at once
    clock.t += 1.0
    assert a.take(4, 60.0)[0] is None  # 4 held: the budget, not the share, says no


def test_a_dead_runs_slots_free_one_window_after_its_last_beat(tmp_path: Path) -> None:
    clock = Tick()
    a, b = runs(tmp_path, clock, 2, period=10.0)  # a beat each 1 s; dead after 3 s
    assert a.take(2, 10.0)[0] and a.take(2, 10.0)[0]
    died = clock.t  # a is killed holding both slots: it never beats again
    clock.t = died + 2.9
    assert b.take(2, 10.0)[0] is None
    clock.t = died + 3.1  # a looks dead: its calls went out by died + 3 at the latest
    assert b.take(2, 10.0) == (None, pytest.approx(9.9))
    clock.t = died + 13.0
    assert b.take(2, 10.0)[0] is not None
    assert b.take(2, 10.0)[0] is not None  # a no longer counts as active: the whole budget


def test_a_429_pauses_every_run(tmp_path: Path) -> None:
    clock = Tick()
    a, b = runs(tmp_path, clock, 2)
    a.pause(30.0)
    assert b.take(10, 60.0) == (None, pytest.approx(30.0))
    clock.t += 30.0
    assert b.take(10, 60.0)[0] is not None


def test_the_file_is_private_and_named_after_the_project(tmp_path: Path) -> None:
    (a,) = runs(tmp_path, Tick(), 1)
    a.take(5, 60.0)
    assert a.path == tmp_path / "P1.json"
    assert a.path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "P1.lock").exists()


def test_open_budget_chooses_the_store(tmp_path: Path, state_dir: Path) -> None:
    assert open_budget("none", "P1", period=60.0) is None
    budget = open_budget("file", "P1", period=60.0, state_dir=tmp_path / "mine")
    assert isinstance(budget, FileBudget)
    assert budget.path.parent == tmp_path / "mine" / "budget"
    budget.close()
    # no folder given: the user's state folder (conftest points XDG_STATE_HOME at a temporary one)
    budget = open_budget("file", "P1", period=60.0)
    assert isinstance(budget, FileBudget)
    assert budget.path.parent == default_state_dir() / "budget" == state_dir / "budget"
    budget.close()
    with pytest.raises(UsageError, match=r"budget_store: cannot reach redis://127\.0\.0\.1:1/0"):
        open_budget("redis://user:s3cret@127.0.0.1:1/0", "P1", period=60.0)
    assert redact("redis://:s3cret@host:6379/0") == "redis://host:6379/0"


def test_the_library_reads_no_state_dir_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHPHONE_STATE_DIR", str(tmp_path / "from-env"))
    budget = open_budget("file", "P1", period=60.0)
    assert isinstance(budget, FileBudget)
    budget.close()
    assert budget.path.parent == default_state_dir() / "budget"
    assert not (tmp_path / "from-env").exists()


def test_the_cli_settings_read_the_state_dir_and_a_library_default_has_none() -> None:
    assert Settings().state_dir is None
    assert load_settings({}, env={}).state_dir is None
    env = {"BATCHPHONE_STATE_DIR": "/srv/batchphone-state"}
    assert load_settings({}, env=env).state_dir == Path("/srv/batchphone-state")


def test_closing_a_store_ends_its_heartbeat_thread(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    budget = FileBudget(tmp_path, "P1", period=0.5)
    assert {t.name for t in set(threading.enumerate()) - before} == {"budget-heartbeat"}
    budget.close()
    assert set(threading.enumerate()) <= before


# -- real processes -----------------------------------------------------------------------------


def worker(*args: str) -> Forked:
    """``python -m tests.budget_worker ARGS``: a process of its own, forked from the zygote."""
    return Forked("budget_worker", list(args), dict(os.environ), ROOT)


def most_in_use(calls: list[tuple[float, float]], window: float) -> int:
    """At each take: calls taken by then and not given back a window before (held or recent)."""
    return max(
        sum(1 for t, back in calls if t <= taken and back > taken - window) for taken, _ in calls
    )


def two_runs(store: str, tmp_path: Path) -> None:
    # six windows of 0.5 s: heartbeats every 0.05 s, a run taken for dead after 0.15 s without
    # one (production windows are 60 s: beats of 1 s); the workers fork at once (no start-up)
    calls, period, seconds = 8, 0.5, 3
    outs = [tmp_path / f"calls{i}.txt" for i in range(2)]
    procs = [
        worker("run", store, str(calls), str(period), str(seconds), "0.03", str(o)) for o in outs
    ]
    for proc in procs:
        _, err = proc.communicate(60)
        assert proc.returncode == 0, err
    per_run = [
        [tuple(map(float, line.split())) for line in out.read_text().splitlines()] for out in outs
    ]
    every: list[tuple[float, float]] = [c for run in per_run for c in run]  # type: ignore[misc]
    # taken/given-back times are read just after/before the store's: 2% of slack (10 ms), so
    # that a store freeing slots 3% early is caught
    assert most_in_use(every, period * 0.98) <= calls
    assert len(every) >= 0.8 * calls * seconds / (period + 0.03)  # and the budget was used
    # fair shares while both ran (one process starts a little before the other)
    # (from one window after the later one's first call: the earlier one had the window alone)
    both = (max(run[0][0] for run in per_run) + period, min(run[-1][0] for run in per_run))
    small, large = sorted(sum(both[0] <= t <= both[1] for t, _ in run) for run in per_run)
    assert small >= 0.8 * large


def killed_holder(store: str) -> None:
    calls, period = 4, 0.5
    holder = worker("hold", store, str(calls), str(period))
    deadline = time.monotonic() + 30
    while holder.output() != "held\n" and holder.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert holder.output() == "held\n"
    os.kill(holder.pid, signal.SIGKILL)
    killed = time.time()
    holder.communicate(10)
    budget = open_budget(store, "Pshared", period=period)
    assert budget is not None
    try:
        got = 0
        first = None
        while got < calls and time.time() < killed + 10:
            slot, wait = budget.take(calls, period)
            if slot is None:
                time.sleep(min(max(wait, 0.005), 0.05))
                continue
            first = first or time.time()
            got += 1
        assert got == calls
        assert first is not None
        # never before the dead run's calls are a window old; within a window and 3 beats
        # (0.05 s each), with 0.3 s to spare for a loaded machine
        assert killed + period - 0.05 <= first <= killed + period + 0.15 + 0.3
    finally:
        budget.close()


@pytest.mark.slow
def test_file_store_two_processes_never_exceed_the_budget(tmp_path: Path) -> None:
    two_runs("file", tmp_path)


@pytest.mark.slow
def test_file_store_a_killed_holder_frees_its_slots_within_a_window() -> None:
    killed_holder("file")


# -- Redis ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A fresh redis-server on a free loopback port (skipped only if none can be started)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = _free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        import redis

        client = redis.Redis.from_url(url)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None:
                    pytest.skip("redis-server could not be started")
                time.sleep(0.05)
        else:
            pytest.skip("redis-server did not answer")
        client.close()
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_redis_store_takes_holds_and_frees_on_the_servers_clock(redis_url: str) -> None:
    budget = RedisBudget(redis_url, "Prule", period=0.5)
    other = RedisBudget(redis_url, "Prule", period=0.5)
    try:
        slots = [budget.take(2, 0.5)[0] for _ in range(2)]
        assert all(slots)
        assert budget.take(2, 0.5)[0] is None
        time.sleep(0.6)  # held: a window passing frees nothing
        assert other.take(2, 0.5)[0] is None
        budget.release(slots[0] or "")
        slot, wait = other.take(2, 0.5)
        assert slot is None and 0.4 < wait <= 0.5
        time.sleep(wait + 0.01)
        assert other.take(2, 0.5)[0] is not None
        budget.pause(2.0)
        slot, wait = other.take(2, 0.5)
        assert slot is None and 1.5 < wait <= 2.0
    finally:
        budget.close()
        other.close()


@pytest.mark.slow
def test_redis_store_two_processes_never_exceed_the_budget(redis_url: str, tmp_path: Path) -> None:
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    two_runs(redis_url, tmp_path)


@pytest.mark.slow
def test_redis_store_a_killed_holder_frees_its_slots_within_a_window(redis_url: str) -> None:
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    killed_holder(redis_url)


# -- a library call -----------------------------------------------------------------------------


class _Threads(NullProgress):
    """Notes the names of the threads alive while rows finish."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def advance(self, result: RowResult) -> None:
        self.seen.update(thread.name for thread in threading.enumerate())


PROJECT, KEY = "P2batchphoneThreadsProject000000", "K2-threads-management-key-0000"


@pytest.fixture
def served(samples: Path) -> Iterator[str]:
    """The emulator on a loopback socket: a real target, whose runs use the file store."""
    users = load_users(samples / "users.csv")
    with ServerThread(Emulator(projects=[ProjectSettings(PROJECT, KEY, users=users)])) as url:
        yield url


def test_no_thread_outlives_a_run_that_used_the_file_store(
    served: str, samples: Path, tmp_path: Path
) -> None:
    target = Target(project_id=PROJECT, management_key=Secret(KEY), base_url=served)
    during = _Threads()
    before = set(threading.enumerate())
    summaries = []
    for _ in range(3):  # a thread that ends a moment after the call would show in one of them
        summary = batchphone.run(
            samples / "phones.csv",
            out=tmp_path / "r.csv",
            target=target,
            rate="10000/1",
            concurrency=4,
            restart=True,
            progress=during,
        )
        assert set(threading.enumerate()) - before == set()
        summaries.append(summary)
    assert [s.counts.get("updated", 0) for s in summaries] == [10, 0, 0]
    assert "budget-heartbeat" in during.seen  # the file store (the default) was beating
    assert (default_state_dir() / "budget" / f"{PROJECT}.json").is_file()


def test_the_cli_keeps_the_file_store_in_batchphone_state_dir(
    served: str, samples: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "cli-state"
    env = {
        "DESCOPE_PROJECT_ID": PROJECT,
        "DESCOPE_MANAGEMENT_KEY": KEY,
        "DESCOPE_BASE_URI": served,
        "BATCHPHONE_STATE_DIR": str(folder),
    }
    args = ["run", str(samples / "phones.csv"), "--out", str(tmp_path / "r.csv")]
    result = CliRunner().invoke(main, args, env=env, catch_exceptions=False)
    assert result.exit_code == 1, result.output  # the samples hold invalid rows
    assert (folder / "budget" / f"{PROJECT}.json").is_file()
    assert not (default_state_dir() / "budget").exists()
