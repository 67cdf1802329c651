"""``batchphone emulator``: flags, one-line errors, projects files, and a real Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from batchphone.emulator import Emulator, Faults
from batchphone.emulator import cli as emulator_cli
from batchphone.emulator.cli import emulator_command

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace the blocking server: record what it would serve, announce it, return at once."""
    seen: dict[str, Any] = {}

    def fake_serve(emulator: Emulator, host: str, port: int, **kwargs: Any) -> None:
        seen.update(emulator=emulator, host=host, port=port, **kwargs)
        kwargs["on_started"](f"http://{host}:{port}")

    monkeypatch.setattr(emulator_cli, "serve", fake_serve)
    monkeypatch.delenv("BATCHPHONE_EMULATOR_KEY", raising=False)
    return seen


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(emulator_command, list(args), env=env)


def test_starts_with_the_sample_users_and_prints_the_base_url(
    served: dict[str, Any], samples: Path
) -> None:
    args = ("--port", "8765", "--project-id", "P", "--management-key", "secret-key-xyz")
    result = run(*args, "--users", str(samples / "users.csv"))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "batchphone emulator listening on http://127.0.0.1:8765 project=P"
    assert lines[1].startswith("batchphone emulator stopped: project=P calls=0 429=0 blocks=0")
    emu: Emulator = served["emulator"]
    assert emu.user("P", "bob@example.com")["phone"] == "+442079460000"  # type: ignore[index]
    assert "secret-key-xyz" not in result.output


def test_flags_reach_the_budget_and_the_faults(served: dict[str, Any]) -> None:
    result = run(
        *("--management-key", "K", "--generate", "5", "--seed", "9", "--rate-limit", "50/1"),
        *("--penalty", "2", "--rate-algorithm", "fixed", "--latency", "0.01", "--jitter", "0.02"),
        *("--arrival-jitter", "0.08"),
        *("--error-503", "0.1", "--html-502", "0.05", "--drop", "0.01", "--timeout", "0.02"),
        *("--timeout-delay", "3", "--lost-answer", "0.03", "--ignore-update", "0.04", "--quiet"),
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1  # --quiet: only the listening line
    emu: Emulator = served["emulator"]
    assert emu.faults == Faults(
        seed=9,
        latency=0.01,
        jitter=0.02,
        arrival_jitter=0.08,
        error_503=0.1,
        html_502=0.05,
        drop=0.01,
        timeout=0.02,
        timeout_delay=3.0,
        lost_answer=0.03,
        ignore_update=0.04,
    )
    assert emu.user("P2batchphoneemulator0000000000", "user4@example.com") is not None
    assert served["log_level"] == "error"


def test_applied_fault_flags_write_latency_and_writes_only_reach_the_faults(
    served: dict[str, Any],
) -> None:
    result = run(
        *("--management-key", "K", "--seed", "4", "--applied-500", "0.1", "--empty-200", "0.05"),
        *("--empty-object-200", "0.02", "--unapplied-200", "0.03", "--timeout-delay", "0.25"),
        *("--write-latency", "0.5", "--fault-writes-only"),
    )
    assert result.exit_code == 0, result.output
    emu: Emulator = served["emulator"]
    assert emu.faults == Faults(
        seed=4,
        applied_500=0.1,
        empty_200=0.05,
        empty_object_200=0.02,
        unapplied_200=0.03,
        timeout_delay=0.25,
        write_latency=0.5,
        writes_only=True,
    )


def test_the_key_may_come_from_the_environment(served: dict[str, Any]) -> None:
    result = run("--project-id", "P", env={"BATCHPHONE_EMULATOR_KEY": "from-env"})
    assert result.exit_code == 0, result.output
    assert "from-env" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate-limit", "500"], "rate limit 500: expected N/SECONDS"),
        (["--rate-limit", "0/60"], "rate limit 0/60: expected N/SECONDS"),
        (["--port", "http"], "'http' is not a valid integer"),
        (["--drop", "2"], "2.0 is not in the range"),
        (["--rate-algorithm", "leaky"], "'leaky' is not one of"),
        (["--bogus"], "No such option '--bogus'"),
        (["--host", "0.0.0.0"], "--host 0.0.0.0: the emulator listens on loopback only"),
        (["--drop", "0.6", "--timeout", "0.6"], "the fault rates add up to more than 1"),
        (["--applied-500", "0.6", "--empty-200", "0.6"], "the fault rates add up to more than 1"),
        (["--write-latency", "-1"], "-1.0 is not in the range"),
        (["--users", "x.csv", "--generate", "3"], "--users and --generate cannot be used together"),
        (["--users", "/nonexistent/users.csv"], "--users /nonexistent/users.csv: No such file"),
    ],
)
def test_bad_flags_give_one_line_and_exit_2(
    served: dict[str, Any], args: list[str], message: str
) -> None:
    result = run("--management-key", "K", *args)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("batchphone emulator: error: ")
    assert message in result.stderr
    assert "emulator" not in served


def test_a_missing_key_is_refused(served: dict[str, Any]) -> None:
    result = run()
    assert result.exit_code == 2
    assert result.stderr == (
        "batchphone emulator: error: --management-key (or BATCHPHONE_EMULATOR_KEY) is required\n"
    )


def test_a_bad_seed_file_gives_one_line_and_exit_2(served: dict[str, Any], tmp_path: Path) -> None:
    seed = tmp_path / "users.csv"
    seed.write_text("loginId,phone\na@example.com,\na@example.com,\n", encoding="utf-8")
    result = run("--management-key", "K", "--users", str(seed))
    assert result.exit_code == 2
    assert result.stderr == (
        f"batchphone emulator: error: --users {seed}: "
        "line 3: 'a@example.com' is already used by line 2\n"
    )


def test_a_toml_projects_file_configures_several_projects(
    served: dict[str, Any], tmp_path: Path, samples: Path
) -> None:
    (tmp_path / "users.csv").write_bytes((samples / "users.csv").read_bytes())
    projects = tmp_path / "projects.toml"
    projects.write_text(
        '[[projects]]\nproject_id = "P1"\nmanagement_key = "K1"\nusers = "users.csv"\n'
        'rate_limit = "100/10"\nlicense_tier = "tier2"\n\n'
        '[[projects]]\nproject_id = "P2"\nmanagement_key = "K2"\ngenerate = 3\n',
        encoding="utf-8",
    )
    result = run("--projects-file", str(projects), "--penalty", "5")
    assert result.exit_code == 0, result.output
    assert "projects=P1,P2" in result.stdout.splitlines()[0]
    emu: Emulator = served["emulator"]
    assert (
        emu.user("P1", "bob@example.com") is not None and emu.user("P2", "bob@example.com") is None
    )
    assert emu.user("P2", "user2@example.com") is not None
    assert (emu.stats("P1").rate_limit, emu.stats("P1").rate_window) == (100, 10.0)
    assert emu.stats("P2").rate_limit == 500


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"projects": [{"project_id": "P1"}]}', "project 1: management_key is required"),
        ('{"projects": [{"project_id": "P1", "management_key": "K", "colour": 1}]}', "colour"),
        ('{"projects": []}', "expected a non-empty list of projects"),
        ("{", "cannot be parsed"),
        (
            json.dumps([{"project_id": "P", "management_key": "K", "rate_limit": "x"}]),
            "project 1: rate limit x",
        ),
        (
            json.dumps([{"project_id": "P", "management_key": "K"}] * 2),
            "project P is configured twice",
        ),
    ],
)
def test_bad_projects_files_give_one_line(
    served: dict[str, Any], tmp_path: Path, content: str, message: str
) -> None:
    projects = tmp_path / "projects.json"
    projects.write_text(content, encoding="utf-8")
    result = run("--projects-file", str(projects))
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_the_command_serves_until_ctrl_c(samples: Path, stop: signal.Signals) -> None:
    command = [sys.executable, "-m", "batchphone.emulator", "--port", "0", "--project-id", "P"]
    command += ["--users", str(samples / "users.csv")]
    env = {**os.environ, "BATCHPHONE_EMULATOR_KEY": "K"}
    with subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.startswith("batchphone emulator listening on http://127.0.0.1:")
            base_url = line.split()[4]
            response = httpx.get(
                f"{base_url}/v1/mgmt/user",
                params={"loginId": "bob@example.com"},
                headers={"Authorization": "Bearer P:K"},
            )
            assert response.status_code == 200
            process.send_signal(stop)
            out, err = process.communicate(timeout=15)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 0, err
    assert "stopped: project=P calls=1" in out
    assert "Traceback" not in err
