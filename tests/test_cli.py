"""The command line: files written, exact one-line errors, exit codes, no key anywhere."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner, Result

from batchphone.cli import main
from batchphone.emulator import Emulator, ProjectSettings, load_users
from batchphone.emulator.server import ServerThread

PROJECT = "P2batchphoneCliProject000000000"
KEY = "K2-cli-management-key-never-shown-42"


def invoke(args: list[str], env: dict[str, str] | None = None) -> Result:
    base_env = {
        "DESCOPE_PROJECT_ID": "",
        "DESCOPE_MANAGEMENT_KEY": "",
        "DESCOPE_BASE_URI": "",
    }
    return CliRunner().invoke(main, args, env={**base_env, **(env or {})}, catch_exceptions=False)


@pytest.fixture
def served(samples: Path) -> Iterator[tuple[Emulator, str]]:
    emulator = Emulator(
        projects=[
            ProjectSettings(
                project_id=PROJECT,
                management_key=KEY,
                users=load_users(samples / "users.csv"),
            )
        ]
    )
    with ServerThread(emulator, port=0) as base_url:
        yield emulator, base_url


def calls(emulator: Emulator) -> int:
    return sum(emulator.stats(PROJECT).requests.values())


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./config.toml from the repository


def test_demo_command_with_embedded_emulator(samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    # DESCOPE_* set to a real-looking target: --emulator must replace it entirely
    result = invoke(
        ["run", str(samples / "phones.csv"), "--emulator", "--out", str(out)],
        env={
            "DESCOPE_PROJECT_ID": "P2realproject",
            "DESCOPE_MANAGEMENT_KEY": KEY,
            "DESCOPE_BASE_URI": "http://127.0.0.1:9",
        },
    )
    assert result.exit_code == 1, result.output
    rows = pl.read_csv(out, infer_schema=False).to_dicts()
    assert len(rows) == 24
    assert {r["status"] for r in rows} == {
        "updated",
        "invalid",
        "not_found",
        "conflict",
        "duplicate",
    }
    assert "updated" in result.stderr and "results:" in result.stderr


def test_real_target_over_a_socket_and_summary_json(
    served: tuple[Emulator, str], samples: Path, tmp_path: Path
) -> None:
    _, base_url = served
    out = tmp_path / "results.xlsx"
    summary_path = tmp_path / "summary.json"
    result = invoke(
        [
            "run",
            str(samples / "phones.csv"),
            "--out",
            str(out),
            "--summary-json",
            str(summary_path),
        ],
        env={
            "DESCOPE_PROJECT_ID": PROJECT,
            "DESCOPE_MANAGEMENT_KEY": KEY,
            "DESCOPE_BASE_URI": base_url,
        },
    )
    assert result.exit_code == 1, result.output
    summary = json.loads(summary_path.read_text())
    assert summary["input_rows"] == 24 and summary["exit_code"] == 1
    assert summary["counts"]["updated"] == 11 and summary["rate_limited"] == 0
    assert summary["requests"] == 14  # 13 updates and the license handshake
    assert set(summary) >= {"input_rows", "counts", "requests", "rate_limited", "elapsed_s"}
    # not a terminal: logs are JSON lines on stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert {e["event"] for e in events} >= {"run_started", "run_finished"}
    assert KEY not in result.output and KEY not in result.stderr
    assert KEY not in out.with_name(out.name + ".journal").read_text()


def test_wrong_key_exits_3_and_never_shows_the_key(
    served: tuple[Emulator, str], samples: Path, tmp_path: Path
) -> None:
    emulator, base_url = served
    out = tmp_path / "results.csv"
    wrong = "K2-wrong-key-that-must-not-leak-77"
    result = invoke(
        ["run", str(samples / "phones.csv"), "--out", str(out), "--log-format", "console"],
        env={
            "DESCOPE_PROJECT_ID": PROJECT,
            "DESCOPE_MANAGEMENT_KEY": wrong,
            "DESCOPE_BASE_URI": base_url,
        },
    )
    assert result.exit_code == 3, result.output
    assert "management key" in result.stderr
    assert "rerun the same command to resume" in result.stderr
    for text in (result.output, result.stderr, out.read_text()):
        assert wrong not in text and KEY not in text
    assert calls(emulator) <= 2  # the license handshake, at most one update in flight


def test_management_key_flag_is_refused(samples: Path, tmp_path: Path) -> None:
    result = invoke(
        [
            "run",
            str(samples / "phones.csv"),
            "--out",
            str(tmp_path / "r.csv"),
            "--management-key",
            "K2x",
        ]
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("batchphone: error: --management-key is not accepted")
    assert "K2x" not in result.stderr


def test_missing_target_is_a_usage_error(samples: Path, tmp_path: Path) -> None:
    result = invoke(["run", str(samples / "phones.csv"), "--out", str(tmp_path / "r.csv")])
    assert result.exit_code == 2
    assert result.stderr == (
        "batchphone: error: no project id: set DESCOPE_PROJECT_ID, project_id in config.toml, "
        "or --project-id\n"
    )


def test_bad_config_value_names_setting_and_source(samples: Path, tmp_path: Path) -> None:
    config = tmp_path / "bp.toml"
    config.write_text('[batchphone]\nrate = "lots"\n')
    result = invoke(
        ["validate", str(samples / "phones.csv"), "--config", str(config)],
    )
    assert result.exit_code == 2
    assert result.stderr == (
        f"batchphone: error: rate: bad value 'lots' ({config}): expected N/SECONDS, e.g. 500/60\n"
    )


def test_flag_beats_env_for_rate(samples: Path, tmp_path: Path) -> None:
    result = invoke(
        ["validate", str(samples / "phones.csv"), "--quiet"],
        env={"BATCHPHONE_RATE": "x/y"},
    )
    assert result.exit_code == 2
    assert "environment variable BATCHPHONE_RATE" in result.stderr


def test_validate_writes_the_same_columns(samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.csv"
    result = invoke(["validate", str(samples / "phones.csv"), "--out", str(out)])
    assert result.exit_code == 1  # the samples have invalid rows
    rows = pl.read_csv(out, infer_schema=False).to_dicts()
    assert len(rows) == 24 and rows[0]["status"] == "valid"
    ok = invoke(["validate", str(samples / "phones.csv"), "--limit", "3", "--quiet"])
    assert ok.exit_code == 0 and ok.stderr == ""


def test_help_lists_the_commands() -> None:
    result = invoke(["--help"])
    assert result.exit_code == 0
    for command in ("run", "validate", "emulator"):
        assert f"  {command} " in result.output


@pytest.mark.parametrize("command", ["run", "plan"])
def test_an_unreachable_budget_store_is_one_line_exit_2(
    command: str, samples: Path, tmp_path: Path
) -> None:
    result = invoke(
        [
            *(command, str(samples / "phones.csv"), "--out", str(tmp_path / "r.csv")),
            *("--project-id", "P1", "--base-url", "http://127.0.0.1:9"),
            *("--budget-store", "redis://:hunter2@127.0.0.1:1/0"),
        ],
        env={"DESCOPE_MANAGEMENT_KEY": "K"},
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines()[-1] == (
        "batchphone: error: budget_store: cannot reach redis://127.0.0.1:1/0: ConnectionError"
    )
    assert "hunter2" not in result.output + result.stderr
