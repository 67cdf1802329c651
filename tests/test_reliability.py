"""Real processes, sockets and signals: kill -9 and resume, Ctrl-C, bad input with zero calls.

Each run under test is a process of its own, forked from a zygote that imported the CLI once
(tests/zygote.py); a resume once the signals are over runs in this process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

import batchphone
from batchphone.cli import main
from batchphone.config import Secret, Settings
from batchphone.emulator import Emulator, Faults, ProjectSettings
from batchphone.emulator.server import ServerThread
from batchphone.files.metrics import LAST_SUCCESS
from tests.zygote import Forked

pytestmark = pytest.mark.slow

PROJECT = "P2batchphoneKillProject00000000"
KEY = "K2-kill-test-key-000000000000000"
ROWS = 300


@pytest.fixture
def served() -> Iterator[tuple[Emulator, str]]:
    users = [{"loginId": f"user{i}@example.com"} for i in range(ROWS)]
    emulator = Emulator(
        projects=[
            ProjectSettings(
                project_id=PROJECT,
                management_key=KEY,
                users=users,
                rate_limit=2000,
                rate_window=1.0,
                penalty=60.0,
            )
        ],
        faults=Faults(seed=3, latency=0.02, jitter=0.01),
    )
    with ServerThread(emulator, port=0) as base_url:
        yield emulator, base_url


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "in.csv"
    pl.DataFrame(
        {
            "loginId": [f"user{i}@example.com" for i in range(ROWS)],
            "phone": [f"+1 415 555 {i:04d}" for i in range(ROWS)],
        }
    ).write_csv(path)
    return path


def start(source: Path, out: Path, base_url: str, *extra: str) -> Forked:
    """``batchphone run SOURCE --out OUT EXTRA`` in a process of its own, in ``out``'s folder."""
    env = {
        **os.environ,
        "DESCOPE_PROJECT_ID": PROJECT,
        "DESCOPE_MANAGEMENT_KEY": KEY,
        "DESCOPE_BASE_URI": base_url,
    }
    return Forked("batchphone", ["run", str(source), "--out", str(out), *extra], env, out.parent)


def resume(source: Path, out: Path, base_url: str, *extra: str) -> tuple[int, str]:
    """The same run as ``start``'s, once the signals are over, in this process: the same CLI
    without a new interpreter's start-up (its exit code, and what it wrote on stderr)."""
    env = {"DESCOPE_PROJECT_ID": PROJECT, "DESCOPE_MANAGEMENT_KEY": KEY}
    args = ["run", str(source), "--out", str(out), *extra]
    with contextlib.chdir(out.parent):
        result = CliRunner().invoke(main, args, env={**env, "DESCOPE_BASE_URI": base_url})
    assert result.exception is None or isinstance(result.exception, SystemExit), result
    return result.exit_code, result.stderr


def requests_to(emulator: Emulator, path: str) -> int:
    return sum(n for (p, _), n in emulator.stats(PROJECT).requests.items() if p == path)


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def prom_values(path: Path) -> dict[str, float]:
    """The samples of a --metrics-file without labels but ``command`` (one command here)."""
    text = path.read_text(encoding="utf-8")
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if set(sample.labels) == {"command"}
    }


def updates(emulator: Emulator) -> dict[str, int]:
    return dict(emulator.stats(PROJECT).updates)


def test_kill_9_at_many_moments_then_resume(
    served: tuple[Emulator, str], source: Path, tmp_path: Path
) -> None:
    emulator, base_url = served
    out = tmp_path / "results.csv"
    kills = 0
    for moment in range(8):
        process = start(source, out, base_url, "--rate", "30/1", "--concurrency", "8")
        # from start-up (no call made yet: the lock, the journal, the license) to well into
        # the run: each resumed run gets a little further, and 300 rows at 30/s outlast all
        # eight (a fork starts at once: no interpreter start-up to wait out)
        time.sleep(0.02 + 0.14 * moment)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == -signal.SIGKILL, stderr
    assert kills >= 6
    # the calls' latency, not the budget, bounds the resume: more calls in flight finish it sooner
    code, stderr = resume(source, out, base_url, "--rate", "1000/1", "--concurrency", "32")
    assert code == 0, stderr
    rows = pl.read_csv(out, infer_schema=False)
    assert rows.height == ROWS
    assert rows["row"].cast(int).to_list() == list(range(1, ROWS + 1))
    # a row whose update went through just before a kill, unjournaled, is read on resume:
    # the user has its phone already, so it ends unchanged and is not sent again
    statuses = rows["status"].to_list()
    assert set(statuses) <= {"updated", "unchanged"}
    assert statuses.count("unchanged") <= 8 * kills
    counts = updates(emulator)
    assert len(counts) == ROWS
    # a row is sent again only when a kill caught it in flight: at most `concurrency` per kill
    assert max(counts.values()) <= 1 + kills
    assert sum(n - 1 for n in counts.values()) <= 8 * kills


def test_sigint_writes_everything_and_resume_finishes(
    served: tuple[Emulator, str], source: Path, tmp_path: Path
) -> None:
    emulator, base_url = served
    out = tmp_path / "results.csv"
    prom = tmp_path / "sync.prom"
    metrics = ("--metrics-file", str(prom))
    process = start(source, out, base_url, "--rate", "50/1", "--log-format", "json", *metrics)
    wait_for(lambda: sum(updates(emulator).values()) >= 30)  # under way: 300 rows take 6 s
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "rerun the same command to resume" in stderr
    stopped = prom_values(prom)
    assert stopped["batchphone_exit_code"] == 130 and LAST_SUCCESS not in stopped
    rows = pl.read_csv(out, infer_schema=False)
    assert rows.height == ROWS
    statuses = set(rows["status"])
    assert statuses == {"updated", "not_attempted"}
    done_before = (rows["status"] == "updated").sum()
    assert 0 < done_before < ROWS
    assert set(rows.filter(pl.col("status") == "not_attempted")["reason"]) == {"INTERRUPTED"}
    # the journal resumes the run; the shared budget file (~4 ms a call here) is not under test
    fast = ("--rate", "1000/1", "--concurrency", "32", "--budget-store", "none")
    code, stderr = resume(source, out, base_url, *fast, *metrics)
    assert code == 0, stderr
    finished = prom_values(prom)
    assert finished["batchphone_exit_code"] == 0 and finished[LAST_SUCCESS] > time.time() - 60
    assert set(pl.read_csv(out, infer_schema=False)["status"]) == {"updated"}
    assert emulator.stats(PROJECT).rate_limited == 0
    assert max(updates(emulator).values()) == 1  # a graceful stop re-sends nothing


def test_second_sigint_cancels_calls_in_flight(source: Path, tmp_path: Path) -> None:
    users = [{"loginId": f"user{i}@example.com"} for i in range(ROWS)]
    slow = Emulator(
        projects=[ProjectSettings(project_id=PROJECT, management_key=KEY, users=users)],
        # every answer (the license handshake's too) takes 30 s: only cancelling ends a call
        faults=Faults(latency=30.0),
    )
    with ServerThread(slow, port=0) as base_url:
        out = tmp_path / "results.csv"
        process = start(source, out, base_url, "--concurrency", "4", "--log-format", "json")
        # a slow start-up under load must not let the first Ctrl-C land before any call has
        # left: the journal is written just before the first call (its answer takes 30 s)
        wait_for(lambda: out.with_name("results.csv.journal").exists())
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)  # first: stop taking rows, wait for the calls in flight
        time.sleep(0.5)
        assert process.poll() is None
        stopped_at = time.monotonic()
        process.send_signal(signal.SIGINT)  # second: cancel them
        _, stderr = process.communicate(timeout=20)
        assert time.monotonic() - stopped_at < 10
    assert process.returncode == 130, stderr
    assert "cancelling calls in flight" in stderr
    rows = pl.read_csv(out, infer_schema=False)
    assert rows.height == ROWS
    assert set(rows["status"]) == {"not_attempted"}
    assert set(rows["reason"]) == {"INTERRUPTED"}


def test_sigterm_during_a_429_pause_exits_at_once(source: Path, tmp_path: Path) -> None:
    users = [{"loginId": f"user{i}@example.com"} for i in range(ROWS)]
    emulator = Emulator(
        projects=[ProjectSettings(project_id=PROJECT, management_key=KEY, users=users)]
    )
    emulator.block(PROJECT, 60.0)  # every call answers 429 for a minute, the license's too
    with ServerThread(emulator, port=0) as base_url:
        out = tmp_path / "results.csv"
        process = start(source, out, base_url, "--log-format", "json")
        wait_for(lambda: requests_to(emulator, "/v1/mgmt/license") > 0)  # the pause has begun
        time.sleep(0.5)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        took = time.monotonic() - signalled
    assert process.returncode == 130, stderr
    assert took < 2.0, stderr  # no call was in flight: the pause does not hold the exit
    # nothing for a second Ctrl-C to cancel: no advice to press it
    assert "stopping: no call in flight" in stderr and "Ctrl-C again" not in stderr
    rows = pl.read_csv(out, infer_schema=False)
    assert rows.height == ROWS and set(rows["status"]) == {"not_attempted"}
    assert rows["loginId"].to_list() == [f"user{i}@example.com" for i in range(ROWS)]


def test_nothing_waiting_for_a_slot_is_sent_after_ctrl_c(
    served: tuple[Emulator, str], source: Path, tmp_path: Path
) -> None:
    emulator, base_url = served
    out = tmp_path / "results.csv"
    # 2 calls per 5 s: the license and one update, then 8 workers wait for the next window
    process = start(source, out, base_url, "--rate", "2/5", "--concurrency", "8", "--no-lookup")
    wait_for(lambda: sum(updates(emulator).values()) > 0)
    time.sleep(0.5)  # the workers now wait for the next window
    sent = sum(updates(emulator).values())
    signalled = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert time.monotonic() - signalled < 2.0, stderr
    assert process.returncode == 130, stderr
    assert sent == 1 and sum(updates(emulator).values()) == sent
    journal = out.with_name(out.name + ".journal").read_bytes().splitlines()
    # the header, the call times, the rows taken from the queue (at most 3 x 8): not 300
    assert len(journal) < 40


def free_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_nothing_listening_stops_at_once_and_the_corrected_url_is_not_refused(
    served: tuple[Emulator, str], source: Path, tmp_path: Path
) -> None:
    emulator, base_url = served
    out = tmp_path / "results.csv"
    wrong = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    process = start(source, out, wrong)
    _, stderr = process.communicate(timeout=60)
    assert time.monotonic() - started < 5, stderr
    assert process.returncode == 3, stderr
    assert f"  stopped: cannot reach {wrong}: connection refused" in stderr.splitlines()[-2]
    assert KEY not in stderr
    rows = pl.read_csv(out, infer_schema=False)
    assert rows.height == ROWS
    assert set(rows["status"]) == {"not_attempted"}
    assert set(rows["reason"]) == {"UNREACHABLE"}
    assert set(rows["attempts"]) == {"0"}
    # the same command with the right URL: the journal records no change, so it is not refused
    fast = ("--rate", "1000/1", "--concurrency", "32", "--budget-store", "none")
    code, stderr = resume(source, out, base_url, *fast)
    assert code == 0, stderr
    rows = pl.read_csv(out, infer_schema=False)
    assert set(rows["status"]) == {"updated"}
    assert updates(emulator) == {f"user{i}@example.com": 1 for i in range(ROWS)}
    stored = {user["loginIds"][0]: user["phone"] for user in emulator.users(PROJECT)}
    assert stored == {f"user{i}@example.com": f"+1415555{i:04d}" for i in range(ROWS)}


def test_a_host_name_that_does_not_resolve_stops_the_run(
    served: tuple[Emulator, str], source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator, base_url = served
    resolve = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        # a DNS failure, without asking any DNS: only loopback traffic in tests
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name.endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    out = tmp_path / "results.csv"
    settings = Settings(
        project_id=PROJECT,
        management_key=Secret(KEY),
        budget_store="none",
        rate_calls=1000,
        rate_period=1.0,
        concurrency=32,
    )
    wrong = "https://api.batchphone.invalid"
    started = time.monotonic()
    summary = batchphone.run(
        source, out=out, settings=settings, target=batchphone.Target(PROJECT, Secret(KEY), wrong)
    )
    assert time.monotonic() - started < 5
    assert summary.exit_code == 3
    assert summary.stopped_reason is not None
    assert summary.stopped_reason.startswith(f"cannot reach {wrong}: the host name does not")
    assert summary.counts == {"not_attempted": ROWS}
    rows = pl.read_csv(out, infer_schema=False)
    assert set(rows["reason"]) == {"UNREACHABLE"} and set(rows["attempts"]) == {"0"}
    assert emulator.stats(PROJECT).total_requests == 0
    summary = batchphone.run(
        source,
        out=out,
        settings=settings,
        target=batchphone.Target(PROJECT, Secret(KEY), base_url),
    )
    assert summary.exit_code == 0
    assert summary.counts == {"updated": ROWS}


def test_sigterm_during_the_final_write_is_a_ctrl_c(tmp_path: Path) -> None:
    # rows settled without a call (invalid phones) make a long journal and no API traffic:
    # the result file's sort and write then take about a second, long enough to be hit
    rows = 30_000
    source = tmp_path / "in.csv"
    pl.DataFrame(
        {"loginId": [f"user{i}@example.com" for i in range(rows)], "phone": ["n/a"] * rows}
    ).write_csv(source)
    seed = tmp_path / "users.csv"
    pl.DataFrame({"loginId": ["user0@example.com"], "phone": ["+14155550000"]}).write_csv(seed)
    out = tmp_path / "results.csv"
    args = ["run", str(source), "--out", str(out)]
    args += ["--emulator", "--emulator-users", str(seed), "--log-format", "json"]
    process = Forked("batchphone", args, dict(os.environ), tmp_path)
    wait_for(lambda: any(tmp_path.glob(".batchphone-sort-*")) or process.poll() is not None)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert '"signal": "SIGTERM"' in stderr  # the run's own stop, as for Ctrl-C
    assert not list(tmp_path.glob(".batchphone-sort-*"))  # no pickled rows left behind
    assert not list(tmp_path.glob(".results.csv.*.tmp"))
    result = pl.read_csv(out, infer_schema=False)
    assert result.height == rows and set(result["reason"]) == {"INVALID_NUMBER"}
