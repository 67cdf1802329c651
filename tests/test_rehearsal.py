"""Rehearsal: the README's migration section run verbatim, and the emulator's state file."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
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
    """The command lines of the first bash block of a README section (## or ###), as argv lists."""
    text = README.read_text(encoding="utf-8")
    level = "###" if f"\n### {section}\n" in text else "##"
    body = text.split(f"\n{level} {section}\n", 1)[1]
    body = body.split(f"\n{level} ", 1)[0]
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
    # a new user runs the README's opening command first, in the same folder: its result file
    # belongs to another emulated project, and the rehearsal must not trip over it
    opening = invoke(["run", "samples/phones.csv", "--emulator", "--out", "results.csv"])
    assert opening.exit_code == 1, opening.stderr
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
    # the seed that made the state (users.csv beside the input) may be named again
    seed = ["--emulator-users", "samples/users.csv"]
    same = invoke(["plan", "samples/phones.csv", "--out", "p5.csv", *state, *seed])
    assert same.exit_code == 1, same.stderr
    assert same.stderr.splitlines()[0] == "emulator: 22 users from state s.json"
    (workdir / "other.csv").write_text("loginId,phone\nzed@example.com,+14155550100\n")
    other = ["--emulator-users", "other.csv"]
    refused = invoke(["plan", "samples/phones.csv", "--out", "p5b.csv", *state, *other])
    assert refused.exit_code == 2
    assert refused.stderr == (
        "batchphone: error: --emulator-users other.csv: the state file s.json was made from "
        "another seed (samples/users.csv); drop --emulator-users, or delete the state file "
        "to seed it again\n"
    )
    machine = invoke(
        ["plan", "samples/phones.csv", "--out", "p6.csv", *state, "--log-format", "json"]
    )
    event = json.loads(machine.stderr.splitlines()[0])
    assert event["event"] == "emulator" and event["users"] == 22
    assert event["message"] == "emulator: 22 users from state s.json"


def test_undo_takes_emulator_and_seeds_from_what_the_run_set(workdir: Path) -> None:
    run = invoke(["run", "samples/phones.csv", "--out", "r.csv", "--emulator"])
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


def test_a_command_that_fails_before_its_first_call_leaves_the_state_alone(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = workdir / "s.json"
    # exit 2 after the emulator was seeded: --canary with --dry-run is refused before any call
    args = ["run", "samples/phones.csv", "--out", "r.csv", "--emulator-state", "s.json"]
    refused = invoke([*args, "--canary", "2", "--dry-run"])
    assert refused.exit_code == 2
    assert not state.exists()
    planned = invoke(["plan", "samples/phones.csv", "--out", "p.csv", "--emulator-state", "s.json"])
    assert planned.exit_code == 1, planned.stderr
    before = state.read_bytes(), os.stat(state).st_ino, os.stat(state).st_mtime_ns
    # bad input, a refused journal (another target's record), a refused flag: nothing written
    (workdir / "empty.csv").write_text("")
    assert invoke(["run", "samples/phones.csv", "--out", "q.csv", "--emulator"]).exit_code == 1
    for argv in (
        ["run", "empty.csv", "--out", "e.csv", "--emulator-state", "s.json"],
        ["run", "samples/phones.csv", "--out", "q.csv", "--emulator-state", "s.json"],
        [*args, "--canary", "2", "--dry-run"],
    ):
        failed = invoke(argv)
        assert failed.exit_code == 2, failed.stderr
        assert len(failed.stderr.splitlines()) == 2  # where the users came from; the error
        assert (state.read_bytes(), os.stat(state).st_ino, os.stat(state).st_mtime_ns) == before

    from batchphone.modes import runner

    real_run = runner.run_sync

    def interrupted_after_its_calls(*args: Any, **kwargs: Any) -> Any:
        real_run(*args, **kwargs)
        raise KeyboardInterrupt

    # Ctrl-C after calls were made: the users they changed are written back
    monkeypatch.setattr("batchphone.modes.runner.run_sync", interrupted_after_its_calls)
    stopped = invoke([*args, "--summary-json", "sum.json"])
    assert stopped.exit_code == 130
    assert json.loads((workdir / "sum.json").read_text())["exit_code"] == 130
    seeded = by_login(load_users(workdir / "samples" / "users.csv"))
    changed = by_login(load_state(state))
    assert len([login for login in seeded if changed[login] != seeded[login]]) == 10


def test_a_rehearsal_never_resumes_the_record_of_another_target(workdir: Path) -> None:
    quick = ["run", "samples/phones.csv", "--out", "results.csv"]
    assert invoke([*quick, "--emulator"]).exit_code == 1  # the README's quick start
    journal = (workdir / "results.csv.journal").read_bytes()
    refused = invoke([*quick, "--emulator-state", "rehearsal.json"])
    assert refused.exit_code == 2, refused.stderr
    assert (
        "(the target is an emulated project (rehearsal.json), not the in-memory emulator "
        "(--emulator)): it is kept as it is" in refused.stderr
    )
    assert (workdir / "results.csv.journal").read_bytes() == journal
    assert not (workdir / "rehearsal.json").exists()
    # a real project (nothing listens there: the refusal comes before any call)
    real = invoke(quick)
    assert real.exit_code == 2
    assert "(the target is project P2realproject, not the in-memory emulator (--emulator))" in (
        real.stderr
    )
    # and the other way round: a rehearsal's record is its own
    state = ["--emulator-state", "rehearsal.json"]
    mine = ["run", "samples/phones.csv", "--out", "mine.csv"]
    assert invoke([*mine, *state]).exit_code == 1
    other = "the target is the in-memory emulator (--emulator), not an emulated project"
    assert f"({other} (rehearsal.json))" in invoke([*mine, "--emulator"]).stderr
    (workdir / "elsewhere").mkdir()
    elsewhere = invoke([*mine, "--emulator-state", "elsewhere/rehearsal.json"])
    assert (
        f"(the target is an emulated project ({workdir / 'elsewhere' / 'rehearsal.json'}), "
        f"not an emulated project ({workdir / 'rehearsal.json'}))" in elsewhere.stderr
    )
    real = invoke(mine)
    assert "(the target is project P2realproject, not an emulated project (rehearsal.json))" in (
        real.stderr
    )
    resumed = invoke([*mine, *state])
    assert resumed.exit_code == 1 and "resumed: 24 rows already final" in resumed.stderr


def test_two_commands_on_one_state_file_take_turns(workdir: Path) -> None:
    from batchphone.modes.rehearsal import embedded_target

    state = workdir / "s.json"
    holder = embedded_target(workdir / "samples" / "phones.csv", None, state_path=state)
    refused = invoke(["plan", "samples/phones.csv", "--out", "p.csv", "--emulator-state", "s.json"])
    assert refused.exit_code == 2
    assert refused.stderr == (
        "batchphone: error: --emulator-state s.json: another batchphone command is using it "
        f"(pid {os.getpid()} on {socket.gethostname()}); one command at a time per state file: "
        "wait for it to end\n"
    )
    assert not (workdir / "p.csv").exists()
    holder.end(succeeded=True)
    assert len(load_state(state)) == 22
    planned = invoke(["plan", "samples/phones.csv", "--out", "p.csv", "--emulator-state", "s.json"])
    assert planned.exit_code == 1, planned.stderr


def test_a_damaged_state_file_is_one_line_and_exit_2(workdir: Path) -> None:
    (workdir / "s.json").write_text("[1, 2]")
    result = invoke(["plan", "samples/phones.csv", "--out", "p.csv", "--emulator-state", "s.json"])
    assert result.exit_code == 2
    assert result.stderr == (
        "batchphone: error: --emulator-state s.json: not a state file "
        "(no format 'batchphone-emulator-state')\n"
    )
