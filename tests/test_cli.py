"""The command line: files written, exact one-line errors, exit codes, no key anywhere."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

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
        "unchanged",  # the users are read first: one already has its row's phone
        "invalid",
        "not_found",
        "conflict",
        "duplicate",
    }
    assert "updated" in result.stderr and "results:" in result.stderr


def test_real_target_over_a_socket_and_summary_json(
    served: tuple[Emulator, str], samples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BATCHPHONE_LOG_FORMAT")  # auto, as under cron
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
    assert summary["counts"]["updated"] == 10 and summary["rate_limited"] == 0
    assert summary["counts"]["unchanged"] == 1
    # the license handshake, 10 updates, and 4 searches: a read and a phone check for the
    # rows, and again for the repeated login ids (judged once the input has ended)
    assert summary["requests"] == 15
    assert set(summary) >= {"input_rows", "counts", "requests", "rate_limited", "elapsed_s"}
    # not a terminal and --log-format auto: stderr carries only JSON lines, the summary too
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert {e["event"] for e in events} >= {"run_started", "run_finished", "summary"}
    closing = events[-1]
    assert closing["event"] == "summary" and closing["counts"]["updated"] == 10
    assert closing["exit_code"] == 1 and closing["level"] == "info"
    assert KEY not in result.output and KEY not in result.stderr
    assert KEY not in out.with_name(out.name + ".journal").read_text()


def test_wrong_key_exits_3_and_never_shows_the_key(
    served: tuple[Emulator, str], samples: Path, tmp_path: Path
) -> None:
    emulator, base_url = served
    out = tmp_path / "results.csv"
    summary_json = tmp_path / "summary.json"
    wrong = "K2-wrong-key-that-must-not-leak-77"
    result = invoke(
        [
            "run",
            str(samples / "phones.csv"),
            "--out",
            str(out),
            "--log-format",
            "console",
            "--summary-json",
            str(summary_json),
        ],
        env={
            "DESCOPE_PROJECT_ID": PROJECT,
            "DESCOPE_MANAGEMENT_KEY": wrong,
            "DESCOPE_BASE_URI": base_url,
        },
    )
    assert result.exit_code == 3, result.output
    assert "management key" in result.stderr
    # the next step is the key, not a plain rerun (a rerun still resumes, once it is fixed)
    assert "next: fix the management key or the project id (HTTP 401)" in result.stderr
    assert "rerun the same command to resume" not in result.stderr
    document = json.loads(summary_json.read_text())
    assert document["next_step"].startswith("fix the management key or the project id")
    for text in (result.output, result.stderr, out.read_text()):
        assert wrong not in text and KEY not in text
    assert calls(emulator) <= 2  # the license handshake, at most one update in flight


def _closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_the_next_step_names_the_option_to_python_and_the_flag_to_the_command_line(
    samples: Path, tmp_path: Path
) -> None:
    """The library's next step names options (``base_url=...``), as its errors do; the command
    line shows their flags, on stderr, in the JSON log and in --summary-json alike."""
    import batchphone

    nowhere = _closed_port()
    key = batchphone.Secret(KEY)
    target = batchphone.Target(project_id=PROJECT, management_key=key, base_url=nowhere)
    summary = batchphone.run(samples / "phones.csv", out=tmp_path / "lib.csv", target=target)
    assert summary.exit_code == 3
    assert summary.next_step == (
        "fix the base URL (base_url=..., DESCOPE_BASE_URI), then rerun the same command"
    )
    cli_step = "fix the base URL (--base-url, DESCOPE_BASE_URI), then rerun the same command"
    env = {"DESCOPE_PROJECT_ID": PROJECT, "DESCOPE_MANAGEMENT_KEY": KEY}
    for log_format in ("console", "json"):
        summary_json = tmp_path / f"{log_format}.json"
        args = ["run", str(samples / "phones.csv"), "--out", str(tmp_path / f"{log_format}.csv")]
        args += ["--base-url", nowhere, "--log-format", log_format]
        result = invoke([*args, "--summary-json", str(summary_json)], env=env)
        assert result.exit_code == 3, result.output
        assert json.loads(summary_json.read_text())["next_step"] == cli_step
        assert "base_url=..." not in result.stderr
        if log_format == "console":
            assert f"next: {cli_step}" in result.stderr
        else:
            events = [json.loads(line) for line in result.stderr.splitlines()]
            (event,) = (e for e in events if e["event"] == "summary")
            assert event["next_step"] == event["hint"] == cli_step


@pytest.mark.parametrize("command", ["run", "plan", "undo"])
def test_a_command_without_its_required_out_is_a_usage_error(command: str, samples: Path) -> None:
    """click 8.3+ counts an explicit ``default=None`` as given: ``--out`` must still be asked
    for (it once ended in "unexpected AssertionError")."""
    result = invoke([command, str(samples / "phones.csv")])
    assert result.exit_code == 2, result.output
    assert "Missing option '--out'" in result.stderr
    assert "unexpected" not in result.stderr and "Traceback" not in result.output


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


def test_an_exit_2_error_is_one_json_event(samples: Path, tmp_path: Path) -> None:
    result = invoke(
        [
            "run",
            str(samples / "phones.csv"),
            "--out",
            str(tmp_path / "r.csv"),
            "--log-format",
            "json",
        ]
    )
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    event = json.loads(line)
    assert event["event"] == "error" and event["exit_code"] == 2
    assert event["message"] == (
        "no project id: set DESCOPE_PROJECT_ID, project_id in config.toml, or --project-id"
    )
    # a bad setting is an error event too, though the settings could not be read
    bad = invoke(
        ["validate", str(samples / "phones.csv"), "--log-format", "json"],
        env={"BATCHPHONE_RATE": "lots"},
    )
    assert bad.exit_code == 2
    [line] = bad.stderr.splitlines()
    assert json.loads(line)["message"].startswith(
        "rate: bad value 'lots' (environment variable BATCHPHONE_RATE)"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "in.csv", "--bogus"], "No such option '--bogus'"),
        (["run", "in.csv", "--concurrency", "x"], "'x' is not a valid integer"),
        (["run"], "Missing argument 'INPUT'"),
        (["rn", "in.csv"], "No such command 'rn'"),
    ],
)
@pytest.mark.parametrize("log_format", ["json", "console"])
def test_a_command_line_click_refuses_is_one_line_too(
    args: list[str], message: str, log_format: str
) -> None:
    """A typo'd flag in a cron job is one JSON event (or one line), like every other error."""
    result = invoke([*args, "--log-format", log_format])
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    if log_format == "json":
        event = json.loads(line)
        assert event["event"] == "error" and event["exit_code"] == 2
        text = event["message"]
    else:
        assert line.startswith("batchphone: error: ")
        text = line
    assert message in text and "--help')" in text
    assert not Path("in.csv").exists() and not list(Path().iterdir())


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_the_removed_skip_unchanged_flag_is_one_line_saying_reads_are_the_default(
    samples: Path, log_format: str
) -> None:
    """An old cron line that passes --skip-unchanged stops before any call, saying why."""
    old = ["run", str(samples / "phones.csv"), "--out", "r.csv", "--emulator", "--skip-unchanged"]
    result = invoke([*old, "--log-format", log_format])
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    text = json.loads(line)["message"] if log_format == "json" else line
    assert "--skip-unchanged was removed: every run reads the users first now" in text
    assert "(--no-lookup turns that off)" in text
    assert not Path("r.csv").exists()
    assert "--skip-unchanged" not in invoke(["run", "--help"]).stdout


def test_a_closed_output_pipe_exits_1_without_a_traceback(
    samples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`batchphone ... | head` closes the pipe: exit 1 quietly, as click's own main does."""
    import batchphone.cli

    def closed(*args: object) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(batchphone.cli, "_execute", closed)
    result = CliRunner().invoke(main, ["validate", str(samples / "phones.csv")])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)


def test_no_progress_bar_in_json_mode(
    samples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import batchphone.render

    bars: list[object] = []

    class Bar(batchphone.render.TqdmProgress):
        def __init__(self) -> None:
            super().__init__()
            bars.append(self)

    monkeypatch.setattr(batchphone.render, "TqdmProgress", Bar)
    monkeypatch.setattr("batchphone.cli._stderr_is_terminal", lambda: True)
    args = ["validate", str(samples / "phones.csv"), "--out", str(tmp_path / "v.csv")]
    invoke([*args, "--log-format", "console"])
    assert len(bars) == 1  # a person at a terminal gets the bar
    invoke([*args, "--log-format", "json"])
    assert len(bars) == 1  # machines do not


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_summary_json_is_written_on_every_exit_path(
    served: tuple[Emulator, str], samples: Path, tmp_path: Path
) -> None:
    _, base_url = served
    phones = str(samples / "phones.csv")
    target = {"DESCOPE_PROJECT_ID": PROJECT, "DESCOPE_BASE_URI": base_url}
    cases = {
        0: (["validate", phones, "--limit", "3"], {}),
        1: (["validate", phones], {}),
        2: (["run", phones, "--out", str(tmp_path / "r2.csv")], {}),
        3: (
            ["run", phones, "--out", str(tmp_path / "r3.csv")],
            {**target, "DESCOPE_MANAGEMENT_KEY": "K2-wrong"},
        ),
    }
    for code, (args, env) in cases.items():
        path = tmp_path / f"summary-{code}.json"
        result = invoke([*args, "--summary-json", str(path)], env=env)
        assert result.exit_code == code, result.stderr
        document = json.loads(path.read_text())
        assert document["exit_code"] == code and _mode(path) == 0o600
    error = json.loads((tmp_path / "summary-2.json").read_text())
    assert error["error"].startswith("no project id") and error["requests"] is None
    assert not list(tmp_path.glob(".summary-*"))  # no temp file left behind


def test_a_resumed_run_says_so(samples: Path, tmp_path: Path) -> None:
    args = ["run", str(samples / "phones.csv"), "--out", str(tmp_path / "r.csv")]
    args += ["--emulator-state", str(tmp_path / "s.json")]
    first = invoke([*args, "--limit", "10"])
    assert first.exit_code == 1, first.stderr
    again = invoke([*args, "--summary-json", str(tmp_path / "s2.json")])
    assert "  resumed: 10 rows already final; 6 sent now; API calls this time: 9\n" in (
        again.stderr
    )
    document = json.loads((tmp_path / "s2.json").read_text())
    assert document["resumed_rows"] == 10 and document["sent_now"] == 6
    assert document["requests"] == 9
    fresh = invoke(["validate", str(samples / "phones.csv"), "--out", str(tmp_path / "v.csv")])
    assert "resumed:" not in fresh.stderr


def test_validate_without_out_prints_the_rows_and_writes_nothing(
    samples: Path, tmp_path: Path
) -> None:
    result = invoke(["validate", str(samples / "phones.csv"), "--summary-json", "s.json"])
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    start = lines.index(
        "  rows not valid (first 11 of 11; no file written: --out FILE writes every row):"
    )
    assert lines[start - 3 : start] == [
        "  valid                 13",
        "  invalid               10",
        "  duplicate              1",
    ]
    assert lines[start + 1] == (
        # the row as the file shows it: line 5 in an editor, row 5 in Excel (the 4th data row)
        "    row 5      invalid    MISSING_REGION         national number without a country: "
        "add a region column or --default-region, or write it as +<country code>..."
    )
    assert len(lines) == start + 12
    assert "results:" not in result.stderr and "batchphone-" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json"]
    document = json.loads((tmp_path / "s.json").read_text())
    assert document["result_path"] is None and len(document["not_valid"]) == 11
    assert document["not_valid"][0] == {
        "row": 4,
        "line": 5,
        "status": "invalid",
        "reason": "MISSING_REGION",
        "explanation": "national number without a country: add a region column or "
        "--default-region, or write it as +<country code>...",
    }


def test_validate_lists_only_the_first_20_rows(tmp_path: Path) -> None:
    source = tmp_path / "bad.csv"
    source.write_text("loginId,phone\n" + "".join(f"u{i},x{i}\n" for i in range(30, 0, -1)))
    result = invoke(["validate", str(source)])
    lines = result.stderr.splitlines()
    assert "  rows not valid (first 20 of 30; no file written: --out FILE writes every row):" in (
        lines
    )
    rows = [line.split()[1] for line in lines if line.startswith("    row ")]
    assert rows == [str(n) for n in range(2, 22)]  # as an editor numbers them: the header is 1


def test_sheet_flag_reads_the_named_sheet(tmp_path: Path) -> None:
    import xlsxwriter

    path = tmp_path / "fix.xlsx"
    workbook = xlsxwriter.Workbook(path)
    workbook.add_worksheet("Notes").write_string(0, 0, "read me")
    users = workbook.add_worksheet("Users")
    for r, row in enumerate([["loginId", "phone"], ["a@example.com", "+14155550100"]]):
        for c, value in enumerate(row):
            users.write_string(r, c, value)
    workbook.close()
    missing = invoke(["validate", str(path)])
    assert missing.exit_code == 2
    assert 'sheets in the workbook: "Notes", "Users"' in missing.stderr
    assert missing.stderr.count("\n") == 1
    found = invoke(["validate", str(path), "--sheet", "Users"])
    assert found.exit_code == 0, found.stderr


@pytest.mark.parametrize("command", ["run", "plan", "undo", "validate"])
def test_every_command_help_ends_with_examples_exit_codes_and_environment(
    command: str,
) -> None:
    text = invoke([command, "--help"]).output
    examples, codes, env = (text.index(h) for h in ("Examples:", "Exit codes:", "Environment:"))
    assert text.index("Options:") < examples < codes < env
    assert text.count(f"batchphone {command} ") >= 2
    assert "    2    usage, config or input error: nothing was sent" in text
    assert "--log-format [auto|console|json]" in text
    if command == "validate":
        assert "No API call: DESCOPE_* are not read." in text
    else:
        assert "DESCOPE_PROJECT_ID, DESCOPE_MANAGEMENT_KEY, DESCOPE_BASE_URI" in text


def test_validate_help_says_out_is_optional() -> None:
    text = " ".join(invoke(["validate", "--help"]).output.split())
    assert "--out PATH Report file, same columns as run (optional: without it no file is " in text
    assert "[required]" not in text


def test_emulator_help_marks_what_is_required() -> None:
    text = invoke(["emulator", "--help"]).output
    assert "[required unless --projects-file]" in text
    assert "Examples:" in text and "BATCHPHONE_EMULATOR_KEY" in text


def test_docs_link_only_to_files_in_the_repository() -> None:
    import re

    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "emulator.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert links, "docs/emulator.md links nowhere"
    for link in links:
        assert not link.startswith("http"), link
        assert (root / "docs" / link).resolve().is_file(), link
    assert "shared/docs" not in text


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


@pytest.mark.parametrize("where", ["file", "env"])
def test_a_key_of_two_lines_is_refused_before_any_call_and_shown_nowhere(
    served: tuple[Emulator, str], samples: Path, tmp_path: Path, where: str
) -> None:
    emulator, base_url = served
    key = KEY + "\n" + "secondLineOfTheKeyFile9876"
    env = {"DESCOPE_PROJECT_ID": PROJECT, "DESCOPE_BASE_URI": base_url}
    out, summary = tmp_path / "r.csv", tmp_path / "summary.json"
    args = ["run", str(samples / "phones.csv"), "--out", str(out), "--summary-json", str(summary)]
    if where == "file":
        (tmp_path / "key").write_text(key + "\r\n")
        args += ["--management-key-file", str(tmp_path / "key")]
    else:
        env["DESCOPE_MANAGEMENT_KEY"] = key
    result = invoke([*args, "--log-format", "console", "--max-attempts", "1"], env=env)
    assert result.exit_code == 2
    source = (
        f"management key file {tmp_path / 'key'}"
        if where == "file"
        else ("environment variable DESCOPE_MANAGEMENT_KEY")
    )
    assert result.stderr == (
        f"batchphone: error: the management key ({source}) holds a space, a line break, a "
        "control character or a character that is not ASCII inside it: a key is one line of "
        "visible characters\n"
    )
    assert calls(emulator) == 0
    written = [path.read_text() for path in tmp_path.iterdir() if path.name != "key"]
    assert [path.name for path in tmp_path.iterdir() if path.name != "key"] == ["summary.json"]
    for text in (result.output, result.stderr, *written):
        assert KEY not in text and "secondLineOfTheKeyFile9876" not in text
    assert json.loads(summary.read_text())["exit_code"] == 2


@pytest.fixture
def no_connection(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every connection or name lookup attempted: refused here, so nothing leaves the machine
    even where the code under test would try."""
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> NoReturn:
        attempts.append(args)
        raise OSError("a test refuses every connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


@pytest.mark.parametrize("how", ["flag", "env"])
def test_plain_http_to_another_machine_is_refused_before_any_connection(
    samples: Path, tmp_path: Path, no_connection: list[object], how: str
) -> None:
    env = {"DESCOPE_PROJECT_ID": PROJECT, "DESCOPE_MANAGEMENT_KEY": KEY}
    out = tmp_path / "r.csv"
    args = ["run", str(samples / "phones.csv"), "--out", str(out), "--max-attempts", "1"]
    url = "http://203.0.113.7:8080"  # TEST-NET-3: never routed, and never tried either
    if how == "flag":
        args += ["--base-url", url]
    else:
        env["DESCOPE_BASE_URI"] = url
    result = invoke([*args, "--log-format", "console"], env=env)
    assert result.exit_code == 2, result.stderr
    assert result.stderr == (
        "batchphone: error: base URL http://203.0.113.7:8080 is plain http to another machine: "
        "the management key would cross the network unencrypted; use https://, or add "
        "--allow-insecure-http if you must\n"
    )
    assert no_connection == [] and list(tmp_path.iterdir()) == []
    assert KEY not in result.stderr


# -- messages that tell the next step (issue 17) ---------------------------------------------


def _help(command: str) -> str:
    result = invoke([command, "--help"])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())  # click wraps the help: compare the words


@pytest.mark.parametrize("command", ["run", "plan", "undo"])
def test_help_says_what_restart_and_a_401_need(command: str) -> None:
    text = _help(command)
    assert "--restart Start over: moves the previous result and journal aside" in text
    assert "fix the management key or project id, then rerun to resume" in text


def test_validate_help_does_not_speak_of_resuming() -> None:
    text = _help("validate")
    assert "130 interrupted (Ctrl-C, SIGTERM): nothing was sent; run it again" in text
    assert "resume" not in text


def test_undo_help_is_written_for_undo() -> None:
    text = _help("undo")
    assert "--allow-remove Restore 'no phone' for users who had none before the run" in text
    assert "An empty phone cell" not in text  # run's text: undo reads no phone cells
    assert "default users.csv beside RESULTS, else each user the run updated" in text
    assert "else the input's ids" not in text


def test_console_logs_do_not_repeat_the_summary_table(samples: Path, tmp_path: Path) -> None:
    args = ["run", str(samples / "phones.csv"), "--emulator", "--out", str(tmp_path / "r.csv")]
    console = invoke(args)
    assert "run: 24 rows in" in console.stderr  # the table
    assert "run_started" not in console.stderr and "run_finished" not in console.stderr
    debug = invoke([*args, "--restart", "--debug"])
    assert "run_started" in debug.stderr and "run_finished" in debug.stderr
    machine = invoke([*args, "--restart", "--log-format", "json"])
    events = [json.loads(line)["event"] for line in machine.stderr.splitlines()]
    assert "run_started" in events and "run_finished" in events


@pytest.mark.parametrize(
    ("command", "extra"),
    [
        ("run", []),
        ("plan", []),
        ("validate", []),  # without --out: the rows not valid are listed
        ("run", ["--dry-run"]),
    ],
)
def test_summary_json_has_exactly_the_fields_of_summary_to_json(
    samples: Path, tmp_path: Path, command: str, extra: list[str]
) -> None:
    import batchphone

    document_path = tmp_path / "summary.json"
    emulator = [] if command == "validate" or extra else ["--emulator"]
    out = [] if command == "validate" else ["--out", str(tmp_path / "cli.csv")]
    args = [command, str(samples / "phones.csv"), *out, *emulator, *extra]
    result = invoke([*args, "--summary-json", str(document_path)])
    assert result.exit_code == 1, result.output
    document = json.loads(document_path.read_text())
    function = getattr(batchphone, command)
    keywords: dict[str, object] = {"dry_run": True} if extra else {}
    if command != "validate":
        keywords["out"] = tmp_path / "api.csv"
        if not extra:
            keywords["target"] = batchphone.Target.emulator()
    summary = function(samples / "phones.csv", **keywords)
    assert list(summary.to_json()) == list(document)
    assert document["sent_now"] == summary.sent_now
    assert summary.to_json()["counts"] == document["counts"]


def test_a_semicolon_csv_from_excel_validates_and_delimiter_is_a_setting(tmp_path: Path) -> None:
    """Excel in much of Europe saves CSV with ``;``; ``|`` needs --delimiter (flag, env, file)."""
    semicolons = tmp_path / "fix.csv"
    semicolons.write_bytes(
        b'\xef\xbb\xbf"loginId";"phone"\r\n"a;b@example.com";+1 415 555 0100\r\n'
    )
    result = invoke(["validate", str(semicolons), "--out", "report.csv"])
    assert result.exit_code == 0, result.stderr
    report = pl.read_csv(tmp_path / "report.csv", infer_schema=False).row(0, named=True)
    assert (report["loginId"], report["phone"]) == ("a;b@example.com", "+14155550100")
    pipes = tmp_path / "pipes.csv"
    pipes.write_text("loginId|phone\na@example.com|+14155550100\n", encoding="utf-8")
    refused = invoke(["validate", str(pipes)])
    assert refused.exit_code == 2 and refused.stderr == (
        f'batchphone: error: {pipes}: has a single column "loginId|phone": its values seem to be '
        'separated by "|", not by "," (use --delimiter \'|\')\n'
    )
    assert invoke(["validate", str(pipes), "--delimiter", "|"]).exit_code == 0
    assert invoke(["validate", str(pipes)], env={"BATCHPHONE_DELIMITER": "|"}).exit_code == 0
    (tmp_path / "config.toml").write_text('[batchphone]\ndelimiter = "pipe"\n', encoding="utf-8")
    assert invoke(["validate", str(pipes)]).exit_code == 0
    bad = invoke(["validate", str(pipes), "--delimiter", "ab"])
    assert bad.exit_code == 2 and "delimiter: bad value 'ab' (flag --delimiter)" in bad.stderr


def test_sheet_names_any_case_and_a_csv_named_xlsx_is_one_line(tmp_path: Path) -> None:
    import xlsxwriter

    path = tmp_path / "fix.xlsx"
    workbook = xlsxwriter.Workbook(path)
    workbook.add_worksheet("Notes").write_string(0, 0, "read me")
    users = workbook.add_worksheet("Users")
    users.write_row(0, 0, ["loginId", "phone"])
    users.write_row(1, 0, ["a@example.com", "+14155550100"])
    users.write_row(3, 0, ["b@example.com", "12"])  # Excel's row 4, after a blank row 3
    workbook.close()
    found = invoke(["validate", str(path), "--sheet", "users"])
    assert found.exit_code == 1, found.stderr
    assert [line.split()[:3] for line in found.stderr.splitlines() if "    row " in line] == [
        ["row", "4", "invalid"]  # the number Excel shows: the support person looks there
    ]
    text = tmp_path / "saved.xlsx"
    text.write_text("loginId,phone\na@example.com,+14155550100\n", encoding="utf-8")
    mixed = invoke(["validate", str(text)])
    assert mixed.exit_code == 2 and mixed.stderr == (
        f"batchphone: error: {text}: is text (CSV or TSV?), not an Excel workbook: "
        "rename it to .csv (.tsv: tab separated)\n"
    )


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_a_library_warning_names_flags_on_the_command_line(
    samples: Path, tmp_path: Path, log_format: str
) -> None:
    """The library's events name options as keywords (no_lookup=True); its log lines on the
    command line show the flags the user typed."""
    bare = tmp_path / "in.csv"  # no verified column
    bare.write_text("loginId,phone\nalice@example.com,+14155550132\n")
    args = ["run", str(bare), "--emulator", "--out", str(tmp_path / "r.csv"), "--no-lookup"]
    result = invoke([*args, "--log-format", log_format])
    assert result.exit_code == 0
    (line,) = [line for line in result.stderr.splitlines() if "rows_sent_unverified" in line]
    assert "--no-lookup and no verified value (no --verified, no verified column)" in line
    assert "no_lookup=" not in line and "verified=..." not in line
