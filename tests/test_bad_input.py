"""Bad input: one line a support person can act on, exit 2, no traceback, and zero API calls."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner, Result

from batchphone.cli import main
from batchphone.emulator import Emulator, ProjectSettings
from batchphone.emulator.server import ServerThread

PROJECT = "P2batchphoneBadInputProject0000"
KEY = "K2-bad-input-key-000000000000000"


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Emulator, str]]:
    users = [{"loginId": f"user{i}@example.com"} for i in range(5)]
    emulator = Emulator(
        projects=[ProjectSettings(project_id=PROJECT, management_key=KEY, users=users)]
    )
    with ServerThread(emulator, port=0) as base_url:
        yield emulator, base_url


def run_cli(base_url: str, *args: str) -> Result:
    env = {
        "DESCOPE_PROJECT_ID": PROJECT,
        "DESCOPE_MANAGEMENT_KEY": KEY,
        "DESCOPE_BASE_URI": base_url,
    }
    return CliRunner().invoke(main, ["run", *args], env=env, catch_exceptions=False)


def calls(emulator: Emulator) -> int:
    return emulator.stats(PROJECT).total_requests


def _write(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    return make


def _corrupt_parquet(folder: Path) -> Path:
    path = folder / "in.parquet"
    pl.DataFrame({"loginId": ["user1@example.com"], "phone": ["+14155550100"]}).write_parquet(path)
    path.write_bytes(path.read_bytes()[:-40])  # truncated: the footer is gone
    return path


BAD_INPUTS: list[tuple[str, Callable[[Path], Path], str]] = [
    ("empty", _write("in.csv", b""), "is empty"),
    ("header only", _write("in.csv", b"loginId,phone\n"), "no data rows"),
    (
        "misspelled column",
        _write("in.csv", b"loginId,phone_number\nuser1@example.com,+14155550100\n"),
        'did you mean "phone_number"',
    ),
    (
        "duplicate column",
        _write("in.csv", b"loginId,phone,phone\nuser1@example.com,+1,+2\n"),
        "appears more than once",
    ),
    (
        "wrong delimiter",  # ; and tab are told from the header; | needs --delimiter
        _write("in.csv", b"loginId|phone\nuser1@example.com|+14155550100\n"),
        "delimiter",
    ),
    (
        "non-UTF-8 bytes",
        _write("in.csv", b"loginId,phone\nuser1@example.com,+1415555\xe90100\n"),
        "UTF-8",
    ),
    ("binary garbage", _write("in.csv", os.urandom(2048)), "in.csv"),
    ("corrupt parquet", _corrupt_parquet, "in.parquet"),
    ("unknown extension", _write("in.txt", b"loginId,phone\n"), ".txt"),
]


@pytest.mark.parametrize(("kind", "make", "words"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_no_call(
    served: tuple[Emulator, str],
    tmp_path: Path,
    kind: str,
    make: Callable[[Path], Path],
    words: str,
) -> None:
    emulator, base_url = served
    before = calls(emulator)
    source = make(tmp_path)
    result = run_cli(base_url, str(source), "--out", str(tmp_path / "r.csv"))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("batchphone: error: ")
    assert result.stderr.count("\n") == 1, result.stderr  # one line
    assert "Traceback" not in result.output
    assert words in result.stderr
    assert calls(emulator) == before
    assert not (tmp_path / "r.csv").exists()


def test_debug_shows_the_traceback(served: tuple[Emulator, str], tmp_path: Path) -> None:
    _, base_url = served
    source = _write("in.csv", b"")(tmp_path)
    result = run_cli(base_url, str(source), "--out", str(tmp_path / "r.csv"), "--debug")
    assert result.exit_code == 2
    assert "Traceback" in result.stderr


def test_out_equal_to_input_and_unwritable_out(
    served: tuple[Emulator, str], tmp_path: Path
) -> None:
    emulator, base_url = served
    before = calls(emulator)
    source = _write("in.csv", b"loginId,phone\nuser1@example.com,+14155550100\n")(tmp_path)
    same = run_cli(base_url, str(source), "--out", str(source))
    assert same.exit_code == 2 and "is the input file" in same.stderr
    assert source.read_bytes().startswith(b"loginId")  # the input is untouched
    missing_dir = run_cli(base_url, str(source), "--out", str(tmp_path / "nope" / "r.csv"))
    assert missing_dir.exit_code == 2 and "nope" in missing_dir.stderr
    assert calls(emulator) == before


def test_bom_crlf_and_quotes_are_fine(served: tuple[Emulator, str], tmp_path: Path) -> None:
    emulator, base_url = served
    data = b'\xef\xbb\xbfloginId,phone\r\n"user1@example.com","+1 (415) 555-0100"\r\n'
    source = _write("in.csv", data)(tmp_path)
    out = tmp_path / "r.csv"
    result = run_cli(base_url, str(source), "--out", str(out))
    assert result.exit_code == 0, result.output
    [row] = pl.read_csv(out, infer_schema=False).to_dicts()
    assert (row["loginId"], row["phone"], row["status"]) == (
        "user1@example.com",
        "+14155550100",
        "updated",
    )
    assert emulator.user(PROJECT, "user1@example.com")["phone"] == "+14155550100"  # type: ignore[index]


def test_numeric_phone_cells_are_flagged_per_row(
    served: tuple[Emulator, str], tmp_path: Path
) -> None:
    emulator, base_url = served
    before = calls(emulator)
    source = tmp_path / "in.parquet"
    pl.DataFrame({"loginId": ["user2@example.com"], "phone": [14155550100]}).write_parquet(source)
    out = tmp_path / "r.csv"
    result = run_cli(base_url, str(source), "--out", str(out))
    assert result.exit_code == 1
    [row] = pl.read_csv(out, infer_schema=False).to_dicts()
    assert (row["status"], row["reason"]) == ("invalid", "NUMERIC_CELL")
    assert calls(emulator) == before + 1  # the license handshake only


def test_a_10_mb_field_is_an_invalid_row_not_a_crash(
    served: tuple[Emulator, str], tmp_path: Path
) -> None:
    emulator, base_url = served
    before = calls(emulator)
    huge = b"9" * (10 * 1024 * 1024)
    source = _write("in.csv", b"loginId,phone\nuser3@example.com," + huge + b"\n")(tmp_path)
    out = tmp_path / "r.csv"
    result = run_cli(base_url, str(source), "--out", str(out))
    assert result.exit_code == 1, result.output
    [row] = pl.read_csv(out, infer_schema=False).to_dicts()
    assert row["status"] == "invalid"
    assert calls(emulator) == before + 1  # the license handshake only
