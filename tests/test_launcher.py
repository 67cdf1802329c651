"""The page's task processes (ui/launcher.py): forked from a process that imported the API once,
yet each takes the server's environment and folder as they are at its start, and its own exit
code, signals and log."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from batchphone.ui.launcher import Worker


def _validate(folder: Path) -> dict[str, object]:
    source = folder / "in.csv"
    source.write_text("loginId,phone\nalice@example.com,(415) 555-0132\n", encoding="utf-8")
    return {"flags": {}, "config_path": None, "steps": [{"command": "validate", "input": "in.csv"}]}


def _summary(worker: Worker) -> dict[str, object]:
    events = [json.loads(line) for line in worker.lines()]
    (summary,) = (event["summary"] for event in events if event["event"] == "summary")
    return dict(summary)


def test_each_task_takes_the_environment_and_folder_of_its_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The forkserver keeps the environment of its own start: a task must not (a key or a
    region set since then, a test's own state folder)."""
    log = tmp_path / "tasks.log"
    spec = _validate(tmp_path)
    monkeypatch.chdir(tmp_path)  # the spec names its input relative to the server's folder
    monkeypatch.delenv("BATCHPHONE_DEFAULT_REGION", raising=False)
    first = Worker(spec, log)
    assert _summary(first)["counts"] == {"invalid": 1}  # a national number without a region
    assert first.wait(30) == 0  # the page reads the counts; 0: every step ran
    monkeypatch.setenv("BATCHPHONE_DEFAULT_REGION", "US")
    second = Worker(spec, log)
    assert _summary(second)["counts"] == {"valid": 1}
    assert second.wait(30) == 0
    assert second.pid not in (first.pid, os.getpid())
    assert oct(log.stat().st_mode & 0o777) == "0o600"


def test_a_task_stopped_by_sigint_ends_as_ctrl_c_and_its_errors_go_to_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "tasks.log"
    monkeypatch.chdir(tmp_path)
    rows = "".join(f"user{i}@example.com,+1415555{i % 10000:04d}\n" for i in range(400_000))
    (tmp_path / "big.csv").write_text("loginId,phone\n" + rows, encoding="utf-8")
    spec = {
        "flags": {},
        "config_path": None,
        "steps": [{"command": "validate", "input": "big.csv"}],
    }
    worker = Worker(spec, log)
    lines = worker.lines()
    assert json.loads(next(lines))["event"] == "start"  # the call has begun: its handler is in
    worker.send_signal(signal.SIGINT)
    assert worker.wait(30) == 130
    missing = Worker({**spec, "steps": [{"command": "validate", "input": "nowhere.csv"}]}, log)
    (error,) = (json.loads(line) for line in missing.lines())
    assert error["event"] == "error" and "nowhere.csv" in error["message"]
    assert missing.wait(30) == error["exit_code"] != 0
