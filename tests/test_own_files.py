"""A command owns its files: no command destroys another's record, no symlink is followed,
the result columns are chosen with --columns, and it all runs where ``fcntl`` does not exist."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner, Result

from batchphone.cli import main
from batchphone.errors import OutputError, ResumeError
from batchphone.files import writer
from batchphone.files.journal import journal_path
from batchphone.files.lock import lock_path
from batchphone.models import LOOKUP_COLUMNS, PLAN_COLUMNS, RESULT_COLUMNS
from tests.emulated import by_row, calls, make_emulator, new_phones, phone_users, write_input
from tests.emulated import run_job as run_emulated
from tests.test_lock import no_fcntl_env


def digest(*paths: Path) -> list[str]:
    return [hashlib.sha256(path.read_bytes()).hexdigest() for path in paths]


def invoke(*args: str, target: bool = False) -> Result:
    env = {"DESCOPE_PROJECT_ID": "", "DESCOPE_MANAGEMENT_KEY": "", "DESCOPE_BASE_URI": ""}
    if target:  # a loopback target no test reaches: each of them stops before any call
        env = {"DESCOPE_PROJECT_ID": "P2x", "DESCOPE_MANAGEMENT_KEY": "K2x"}
        env["DESCOPE_BASE_URI"] = "http://127.0.0.1:9"
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./config.toml from the repository


# -- no command destroys another command's record -------------------------------------------
OTHERS = {
    "validate": ("validate", {}, {}),
    "plan": ("plan", {}, {}),
    "run --dry-run": ("run", {}, {"dry_run": True}),
    "run --no-lookup": ("run", {}, {"no_lookup": True}),
    "run of another file": ("run", {}, {}),
}


@pytest.mark.anyio
@pytest.mark.parametrize("other", list(OTHERS))
async def test_no_other_command_replaces_the_record_of_a_run(tmp_path: Path, other: str) -> None:
    emulator = make_emulator(phone_users(4))
    source = write_input(tmp_path / "in.csv", new_phones(4), ["true"] * 4)
    out = tmp_path / "results.csv"
    summary = await run_emulated(emulator, "run", source, out)
    assert summary.counts == {"updated": 4}
    before = digest(out, journal_path(out))
    command, job, overrides = OTHERS[other]
    if other == "run of another file":
        source = write_input(tmp_path / "other.csv", new_phones(3), ["true"] * 3)
    sent = calls(emulator)
    with pytest.raises(ResumeError) as caught:
        await run_emulated(emulator, command, source, out, job=job, **overrides)
    assert "is the record of a 'run' of in.csv that changed users" in str(caught.value)
    assert digest(out, journal_path(out)) == before  # byte-identical
    assert calls(emulator) == sent  # refused before any call
    # the run itself still resumes it: nothing is sent again
    resumed = await run_emulated(emulator, "run", tmp_path / "in.csv", out)
    assert resumed.resumed_rows == 4 and calls(emulator) == sent + 1  # the license handshake


@pytest.mark.anyio
async def test_restart_moves_the_record_aside_and_says_where(tmp_path: Path) -> None:
    emulator = make_emulator(phone_users(4))
    source = write_input(tmp_path / "in.csv", new_phones(4), ["true"] * 4)
    out = tmp_path / "results.csv"
    await run_emulated(emulator, "run", source, out)
    before = digest(out, journal_path(out))
    summary = await run_emulated(emulator, "plan", source, out, restart=True)
    moved = [Path(path) for path in summary.moved_aside]
    assert [path.parent for path in moved] == [tmp_path, tmp_path]  # beside them
    assert moved[0].name.startswith("results.moved-") and moved[0].suffix == ".csv"
    assert moved[1] == journal_path(moved[0])
    assert digest(*moved) == before  # moved, never rewritten
    assert summary.to_json()["moved_aside"] == [str(path) for path in moved]
    assert set(by_row(out).values()) == {("unchanged", None)}  # the plan's own result
    assert {s for s, _ in by_row(moved[0]).values()} == {"updated"}


def test_cli_refuses_in_one_line_then_moves_aside(samples: Path, tmp_path: Path) -> None:
    source = samples / "phones.csv"
    out = tmp_path / "results.csv"
    first = invoke("run", str(source), "--emulator", "--out", str(out), "--quiet")
    assert first.exit_code == 1, first.stderr  # the sample has invalid rows on purpose
    before = digest(out, journal_path(out))
    for args in (["validate"], ["plan", "--emulator"], ["run", "--dry-run", "--emulator"]):
        refused = invoke(*args, str(source), "--out", str(out))
        assert refused.exit_code == 2, args
        # the emulator's one line on where its users came from, then the one error line
        lines = [ln for ln in refused.stderr.splitlines() if not ln.startswith("emulator: ")]
        assert len(lines) == 1, refused.stderr
        assert lines[0].startswith(f"batchphone: error: {journal_path(out)} is the record")
        assert "of a 'run' of phones.csv that changed users" in lines[0]
        assert digest(out, journal_path(out)) == before
    restarted = invoke("run", str(source), "--emulator", "--out", str(out), "--restart")
    assert restarted.exit_code == 1
    moved = sorted(tmp_path.glob("results.moved-*"))
    assert [path.name.endswith(".csv") for path in moved] == [True, False]
    assert digest(*moved) == before
    assert f"moved aside: {moved[0]}" in restarted.stderr
    assert f"moved aside: {moved[1]}" in restarted.stderr


# -- no symlink games -----------------------------------------------------------------------
@pytest.mark.parametrize("where", ["result", "journal", "lock"])
def test_a_symlink_in_place_of_our_files_is_refused(
    samples: Path, tmp_path: Path, where: str
) -> None:
    out = tmp_path / "results.csv"
    link = {"result": out, "journal": journal_path(out), "lock": lock_path(out)}[where]
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    link.symlink_to(victim)
    result = invoke("validate", str(samples / "phones.csv"), "--out", str(out))
    assert result.exit_code == 2
    assert result.stderr == (
        f"batchphone: error: {link}: is a symbolic link: batchphone never writes its files "
        "through a link; remove the link or choose another --out\n"
    )
    assert victim.read_text() == "precious\n" and link.is_symlink()
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([link.name, "victim.txt"])


# -- --columns ------------------------------------------------------------------------------
def test_columns_pick_and_order_the_short_sheet_and_the_result_keeps_all(
    samples: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report.csv"
    wanted = "row,loginId,phone,status,reason,error_message"
    result = invoke("validate", str(samples / "phones.csv"), "--out", str(out), "--columns", wanted)
    assert result.exit_code == 1, result.stderr
    assert pl.read_csv(out, infer_schema=False).columns == list(RESULT_COLUMNS)
    short = pl.read_csv(tmp_path / "report.short.csv", infer_schema=False)
    assert short.columns == wanted.split(",") and short.height == 24
    full = pl.read_csv(out, infer_schema=False).select(wanted.split(","))
    assert short.equals(full)  # the same rows, in the same order
    assert stat.S_IMODE((tmp_path / "report.short.csv").stat().st_mode) == 0o600


@pytest.mark.parametrize("command", ["run", "plan", "validate", "undo"])
def test_an_unknown_column_is_a_usage_error_before_anything(
    samples: Path, tmp_path: Path, command: str
) -> None:
    out = tmp_path / "out.csv"
    args = [command, str(samples / "phones.csv"), "--out", str(out), "--columns", "row,phnoe"]
    if command != "validate":
        args.append("--emulator" if command != "undo" else "--dry-run")
    result = invoke(*args)
    assert result.exit_code == 2
    valid = ",".join(RESULT_COLUMNS + LOOKUP_COLUMNS + PLAN_COLUMNS)
    assert result.stderr == (
        "batchphone: error: columns: bad value 'row,phnoe' (flag --columns): "
        f"unknown column 'phnoe'; valid: {valid}\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_rerunning_a_finished_run_with_columns_keeps_the_record_for_undo(
    samples: Path, tmp_path: Path
) -> None:
    """The sequence that used to lose phone_before: run, the same run again with --columns
    (it resumes, nothing to send, and rewrites the result), then undo from the result."""
    state = tmp_path / "project.json"
    source = str(samples / "phones.csv")
    rehearse = ["--emulator-state", str(state), "--log-format", "console"]
    assert invoke("run", source, "--out", "run.csv", *rehearse).exit_code == 1
    short = "row,line,loginId,phone,status"
    again = invoke("run", source, "--out", "run.csv", *rehearse, "--columns", short)
    assert again.exit_code == 1, again.stderr
    assert pl.read_csv(tmp_path / "run.csv", infer_schema=False).columns == [
        *RESULT_COLUMNS,
        *LOOKUP_COLUMNS,
    ]
    assert pl.read_csv(tmp_path / "run.short.csv").columns == short.split(",")
    excel = invoke("run", source, "--out", "run.csv", *rehearse, "--short-out", "fix.xlsx")
    assert excel.exit_code == 1, excel.stderr
    sheet = pl.read_excel(tmp_path / "fix.xlsx", infer_schema_length=0)
    assert sheet.columns == ["row", "line", "loginId", "phone", "status", "reason", "error_message"]
    assert sheet["status"].to_list().count("updated") == 10
    # some users had no phone before: putting that back removes the run's (--allow-remove)
    undone = invoke("undo", "run.csv", "--out", "undo.csv", *rehearse, "--allow-remove")
    assert undone.exit_code == 0, undone.stderr
    assert "  updated               10\n" in undone.stderr


def test_a_short_sheet_cannot_be_undone_and_says_which_file_can(
    samples: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report.csv"
    short = tmp_path / "short.csv"
    columns = "row,loginId,status,phone_before,verified_before"
    args = ["--out", str(out), "--columns", columns, "--short-out", str(short)]
    assert invoke("validate", str(samples / "phones.csv"), *args).exit_code == 1
    result = invoke("undo", str(short), "--out", str(tmp_path / "undo.csv"), target=True)
    assert result.exit_code == 2
    assert result.stderr == (
        f"batchphone: error: {short}: has no column 'phone': a short sheet (--columns, "
        "--short-out) cannot be undone: undo the result file of that run "
        "(undo needs loginId, phone, status, phone_before, verified_before)\n"
    )


def test_short_out_needs_a_result_file_of_its_own(samples: Path, tmp_path: Path) -> None:
    source = str(samples / "phones.csv")
    alone = invoke("validate", source, "--short-out", "short.csv")
    assert alone.exit_code == 2 and alone.stderr == (
        "batchphone: error: --short-out needs --out: it holds the rows of the result file\n"
    )
    same = invoke("validate", source, "--out", "r.csv", "--short-out", "r.csv")
    assert same.exit_code == 2 and "is the result file, which keeps every column" in same.stderr
    assert list(tmp_path.iterdir()) == []


# -- Windows and macOS: no fcntl ------------------------------------------------------------
@pytest.mark.slow
def test_an_end_to_end_run_without_fcntl(samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.xlsx"
    env = no_fcntl_env(tmp_path)
    for name in ("DESCOPE_PROJECT_ID", "DESCOPE_MANAGEMENT_KEY", "DESCOPE_BASE_URI"):
        env.pop(name, None)
    argv = [sys.executable, "-m", "batchphone", "run", str(samples / "phones.csv")]
    argv += ["--emulator", "--out", str(out), "--quiet"]
    probe = (
        "import sys; import batchphone.cli, batchphone.modes.runner; print(sys.modules['fcntl'])"
    )
    shown = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert shown.stdout.strip() == "None"  # the shim is in force: import fcntl fails
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stderr  # the sample has invalid rows on purpose
    statuses = pl.read_excel(out)["status"].to_list()
    assert len(statuses) == 24 and statuses.count("updated") == 10
    if os.name == "posix":
        assert (os.stat(out).st_mode & 0o777) == 0o600


# -- checks made before the first call: side files, --limit on a resume, an XLSX too long ---
SIDE_OPTIONS = ["--summary-json", "--emulator-state"]
OWN_FILES = {
    "the input file": lambda out, source: source,
    "the result file": lambda out, source: out,
    "the result file's journal": lambda out, source: journal_path(out),
    "the result file's lock": lambda out, source: lock_path(out),
}


@pytest.fixture
def finished_run(samples: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A run's input (a copy of the sample) and result file, its journal and lock beside it."""
    source = tmp_path / "phones.csv"
    source.write_bytes((samples / "phones.csv").read_bytes())
    out = tmp_path / "results.csv"
    first = invoke("run", str(source), "--emulator", "--out", str(out), "--quiet")
    assert first.exit_code == 1, first.stderr  # the sample has invalid rows on purpose
    return source, out


@pytest.mark.parametrize("option", SIDE_OPTIONS)
@pytest.mark.parametrize("what", list(OWN_FILES))
def test_an_option_naming_one_of_the_commands_own_files_is_refused(
    finished_run: tuple[Path, Path], option: str, what: str
) -> None:
    source, out = finished_run
    own = OWN_FILES[what](out, source)
    before = digest(source, out, journal_path(out), lock_path(out))
    result = invoke("run", str(source), "--emulator", "--out", str(out), option, str(own))
    assert result.exit_code == 2
    assert result.stderr == (
        f"batchphone: error: {option} {own}: is {what}, which it would overwrite: "
        "choose another path\n"
    )
    assert digest(source, out, journal_path(out), lock_path(out)) == before


def test_a_hard_link_to_the_result_file_is_refused_too(finished_run: tuple[Path, Path]) -> None:
    source, out = finished_run
    alias = out.parent / "summary.json"
    os.link(out, alias)
    before = digest(out)
    argv = ["run", str(source), "--emulator", "--out", str(out), "--summary-json", str(alias)]
    refused = invoke(*argv)
    assert refused.exit_code == 2
    assert "is the result file, which it would overwrite" in refused.stderr
    assert digest(out) == before


def test_the_summary_and_the_state_on_one_file_are_refused(
    finished_run: tuple[Path, Path],
) -> None:
    source, out = finished_run
    both = out.parent / "both.json"
    result = invoke(
        "run", str(source), "--emulator", "--out", str(out),
        "--summary-json", str(both), "--emulator-state", str(both),
    )  # fmt: skip
    assert result.exit_code == 2
    assert f"--emulator-state {both}: is --summary-json" in result.stderr
    assert not both.exists()


@pytest.mark.parametrize("other", ["--summary-json", "--emulator-state"])
def test_the_short_sheet_on_another_options_file_is_refused(
    finished_run: tuple[Path, Path], other: str
) -> None:
    """The short sheet, the summary and the emulator's state each write their file at the end:
    on one path, one would silently replace the other (the state holds the rehearsal's users)."""
    source, out = finished_run
    both = out.parent / "both.jsonl"
    result = invoke(
        "run", str(source), "--emulator", "--out", str(out), other, str(both),
        "--short-out", str(both),
    )  # fmt: skip
    assert result.exit_code == 2
    assert f"--short-out {both}: is {other}, which it would overwrite" in result.stderr
    if other == "--summary-json":  # what it was asked for: the summary of the refusal
        assert json.loads(both.read_text())["exit_code"] == 2
    else:
        assert not both.exists()


def test_a_smaller_limit_on_a_resumed_run_is_refused(finished_run: tuple[Path, Path]) -> None:
    source, out = finished_run
    before = digest(out, journal_path(out))
    result = invoke("run", str(source), "--emulator", "--out", str(out), "--limit", "10")
    assert result.exit_code == 2
    lines = [ln for ln in result.stderr.splitlines() if not ln.startswith("emulator: ")]
    assert lines == [
        f"batchphone: error: --limit 10: the journal of {out} holds rows up to 24, which its "
        "result file keeps: give --limit 24 or more, or no --limit"
    ]
    assert digest(out, journal_path(out)) == before
    assert len(pl.read_csv(out)) == 24
    wider = invoke("run", str(source), "--emulator", "--out", str(out), "--limit", "24")
    assert wider.exit_code == 1 and len(pl.read_csv(out)) == 24  # the same rows: resumed


@pytest.mark.anyio
async def test_an_xlsx_result_too_long_for_a_sheet_is_refused_before_any_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "XLSX_MAX_ROWS", 7)  # Excel's 1,048,575, scaled down
    emulator = make_emulator(phone_users(8))
    source = write_input(tmp_path / "in.csv", new_phones(8), ["true"] * 8)
    out = tmp_path / "r.xlsx"
    with pytest.raises(OutputError) as caught:
        await run_emulated(emulator, "run", source, out)
    assert str(caught.value) == (
        f"{out}: 8 rows do not fit in an Excel sheet (at most 7 below the header): "
        "use out=r.csv (or .parquet)"
    )
    assert calls(emulator) == 0 and not out.exists() and not journal_path(out).exists()
    assert (await run_emulated(emulator, "run", source, out, limit=7)).counts == {"updated": 7}
