"""Rehearsal: the README's migration section run verbatim, and the emulator's state file."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from batchphone.cli import main
from batchphone.emulator import load_users
from batchphone.emulator.statefile import load_state

README = Path(__file__).resolve().parents[1] / "README.md"
#: DESCOPE_* pointing at a real-looking target: a rehearsal must never use it
REAL_TARGET = {
    "DESCOPE_PROJECT_ID": "P2realproject",
    "DESCOPE_MANAGEMENT_KEY": "K2-real-key",
    "DESCOPE_BASE_URI": "http://127.0.0.1:9",
}


def readme_commands(section: str) -> list[list[str]]:
    """The command lines of the first bash block of a README section, as argv lists."""
    body = README.read_text(encoding="utf-8").split(f"\n## {section}\n", 1)[1]
    body = body.split("\n## ", 1)[0]
    block = body.split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def invoke(args: list[str], env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, args, env={**REAL_TARGET, **(env or {})})


def by_login(users: list[dict[str, Any]]) -> dict[str, tuple[str, bool]]:
    return {user["loginIds"][0]: (user["phone"], user["verifiedPhone"]) for user in users}


@pytest.fixture
def workdir(samples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(samples, tmp_path / "samples")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_readme_rehearsal_runs_verbatim_and_undo_restores_every_phone(
    workdir: Path,
) -> None:
    commands = readme_commands("Rehearsing a migration")
    assert [c[:2] for c in commands] == [
        ["batchphone", "validate"],
        ["batchphone", "plan"],
        ["batchphone", "run"],
        ["batchphone", "undo"],
        ["batchphone", "undo"],
    ]
    seeded = by_login(load_users(workdir / "samples" / "users.csv"))
    codes, after_run = [], {}
    for argv in commands:
        result = invoke(argv[1:])
        assert result.exception is None or isinstance(result.exception, SystemExit), result
        codes.append(result.exit_code)
        if argv[1] == "run":
            after_run = by_login(load_state(workdir / "rehearsal.json"))
    # the samples hold invalid, unknown and conflicting rows on purpose (the README says so)
    assert codes == [1, 1, 1, 0, 0]
    changed = {login for login, state in after_run.items() if state != seeded[login]}
    assert len(changed) == 10  # the run's 10 updated rows
    assert by_login(load_state(workdir / "rehearsal.json")) == seeded
    assert not (workdir / "samples" / "report.csv").exists()
    assert stat.S_IMODE(os.stat(workdir / "rehearsal.json").st_mode) == 0o600


def test_every_emulator_run_says_where_its_users_came_from(workdir: Path) -> None:
    seeded = invoke(["plan", "samples/phones.csv", "--out", "p.csv", "--emulator"])
    assert seeded.stderr.splitlines()[0] == "emulator: 22 users from samples/users.csv"
    (workdir / "mine").mkdir()
    shutil.copy(workdir / "samples" / "phones.csv", workdir / "mine" / "phones.csv")
    from_input = invoke(["plan", "mine/phones.csv", "--out", "p2.csv", "--emulator"])
    assert from_input.stderr.splitlines()[0] == (
        "emulator: 22 users from the input's login ids (every login id exists)"
    )
    state = ["--emulator-state", "s.json"]
    invoke(["plan", "samples/phones.csv", "--out", "p3.csv", *state])
    again = invoke(["plan", "samples/phones.csv", "--out", "p4.csv", *state])
    assert again.stderr.splitlines()[0] == "emulator: 22 users from state s.json"
    refused = invoke(
        ["plan", "samples/phones.csv", "--out", "p5.csv", *state, "--emulator-users", "x.csv"]
    )
    assert refused.exit_code == 2
    assert "the state file s.json already holds the users" in refused.stderr
    machine = invoke(
        ["plan", "samples/phones.csv", "--out", "p6.csv", *state, "--log-format", "json"]
    )
    event = json.loads(machine.stderr.splitlines()[0])
    assert event["event"] == "emulator" and event["users"] == 22
    assert event["message"] == "emulator: 22 users from state s.json"


def test_undo_takes_emulator_and_seeds_from_what_the_run_set(workdir: Path) -> None:
    run = invoke(["run", "samples/phones.csv", "--out", "r.csv", "--emulator", "--skip-unchanged"])
    assert run.exit_code == 1, run.stderr
    undo = invoke(["undo", "r.csv", "--out", "u.csv", "--emulator", "--allow-remove"])
    assert undo.stderr.splitlines()[0] == (
        "emulator: 10 users from the results' updated rows (each with the phone the run set)"
    )
    assert undo.exit_code == 0, undo.stderr


def test_emulator_honours_the_column_flags(workdir: Path) -> None:
    source = workdir / "renamed.csv"
    source.write_text("user,mobile\na@example.com,+14155550100\nb@example.com,+14155550101\n")
    result = invoke(
        [
            "run",
            str(source),
            "--out",
            "r.csv",
            "--emulator",
            "--login-id-column",
            "user",
            "--phone-column",
            "mobile",
        ]
    )
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines()[0] == (
        "emulator: 2 users from the input's login ids (every login id exists)"
    )


def test_the_state_is_written_on_error_and_ctrl_c_exits(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # exit 2 after the emulator was seeded: --canary with --dry-run is refused before any call
    refused = invoke(
        [
            "run",
            "samples/phones.csv",
            "--out",
            "r.csv",
            "--emulator-state",
            "s.json",
            "--canary",
            "2",
            "--dry-run",
        ]
    )
    assert refused.exit_code == 2
    assert len(load_state(workdir / "s.json")) == 22

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr("batchphone.runner.run_sync", interrupted)
    (workdir / "s.json").unlink()
    stopped = invoke(
        [
            "run",
            "samples/phones.csv",
            "--out",
            "r.csv",
            "--emulator-state",
            "s.json",
            "--summary-json",
            "sum.json",
        ]
    )
    assert stopped.exit_code == 130
    assert len(load_state(workdir / "s.json")) == 22
    assert json.loads((workdir / "sum.json").read_text())["exit_code"] == 130


def test_a_damaged_state_file_is_one_line_and_exit_2(workdir: Path) -> None:
    (workdir / "s.json").write_text("[1, 2]")
    result = invoke(["plan", "samples/phones.csv", "--out", "p.csv", "--emulator-state", "s.json"])
    assert result.exit_code == 2
    assert result.stderr == (
        "batchphone: error: --emulator-state s.json: not a state file "
        "(no format 'batchphone-emulator-state')\n"
    )
