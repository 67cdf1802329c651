"""validate and dry runs through report.py: the same result file as the row-by-row path."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import batchphone
import batchphone.modes.report
import batchphone.rows.prepare
from batchphone.emulator import Emulator
from batchphone.files.journal import journal_path
from batchphone.files.reader import InputSpec, open_input
from batchphone.models import Reason, RowResult, Status, Summary
from batchphone.modes.report import report_rows
from batchphone.rows.prepare import Mode, Preparer, RowRules
from tests.emulated import make_emulator, run_job

pytestmark = pytest.mark.anyio

STAMP = "2026-01-02T03:04:05.678Z"

# Every reason and status a job that sends nothing can give (NUMERIC_CELL: a JSON number).
ROWS: list[dict[str, Any]] = [
    {"loginId": "ok@example.com", "phone": "+1 (415) 555-0134"},
    {"loginId": "national@example.com", "phone": "(415) 555-0135", "region": "US"},
    {"loginId": "gb@example.com", "phone": "0 20 7946 0000", "region": "gb"},
    {"loginId": "noregion@example.com", "phone": "020 7946 0001"},
    {"loginId": "empty@example.com", "phone": ""},
    {"loginId": "ext@example.com", "phone": "+1 415 555 0136 ext. 12"},
    {"loginId": "sci@example.com", "phone": "4.4790E+11"},
    {"loginId": "short@example.com", "phone": "+1 41"},
    {"loginId": "long@example.com", "phone": "+1 415 555 0136 1234 5678 9"},
    {"loginId": "cc@example.com", "phone": "+999 1234 5678"},
    {"loginId": "region@example.com", "phone": "+14155550137", "region": "XX"},
    {"loginId": "numeric@example.com", "phone": 447911123456},
    {"loginId": "verified@example.com", "phone": "+14155550138", "verified": "maybe"},
    {"loginId": "flag@example.com", "phone": "+14155550139", "verified": "yes"},
    {"loginId": "", "phone": "+14155550140"},
    {"loginId": "garbage@example.com", "phone": "call me"},
    {"loginId": "=cmd|' /c calc'!A1", "phone": "=1+2"},
    {"loginId": "dup@example.com", "phone": "+14155550141"},
    {"loginId": "conflict@example.com", "phone": "+14155550142"},
    {"loginId": "dup@example.com", "phone": "+1 415 555 0141"},
    {"loginId": "conflict@example.com", "phone": "+14155550143"},
    {"loginId": "switchboard@example.com", "phone": "+1 (415) 555-0134"},
    {"loginId": "dup@example.com", "phone": "+14155550141"},
    {"loginId": "flagged@example.com", "phone": "+14155550145", "verified": "true"},
    {"loginId": "flagged@example.com", "phone": "+14155550145", "verified": "false"},
    {"loginId": "unicode@example.com", "phone": "＋１ ４１５ ５５５ ０１４４"},
]


def _input(tmp_path: Path) -> Path:
    path = tmp_path / "mixed.jsonl"
    lines = [json.dumps(row, ensure_ascii=False) for row in ROWS]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both paths stamp ``finished_at`` alike, so the files can be compared byte for byte."""
    monkeypatch.setattr(batchphone.rows.prepare, "now_iso", lambda: STAMP)
    monkeypatch.setattr(batchphone.modes.report, "now_iso", lambda: STAMP)


def _content(path: Path) -> Any:
    if path.suffix == ".parquet":
        return pl.read_parquet(path).to_dicts()
    if path.suffix == ".xlsx":  # the workbook's own creation time differs: compare the sheets
        with zipfile.ZipFile(path) as book:
            return {
                name: book.read(name) for name in book.namelist() if not name.startswith("docProps")
            }
    return path.read_bytes()


async def _both(
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    source: Path,
    out_dir: Path,
    ext: str,
    **overrides: Any,
) -> tuple[Path, Path, Summary, Summary]:
    new, old = out_dir / f"new.{ext}", out_dir / f"old.{ext}"
    fast = await run_job(emulator, command, source, new, **overrides)
    # the row-by-row path: judge, journal, sort, write
    slow = await run_job(emulator, command, source, old, local=False, **overrides)
    return new, old, fast, slow


@pytest.mark.usefixtures("fixed_clock")
@pytest.mark.parametrize("ext", ["csv", "tsv", "jsonl", "parquet", "xlsx"])
@pytest.mark.parametrize(
    ("command", "overrides"),
    [
        ("validate", {}),
        ("validate", {"allow_remove": True, "default_region": "GB"}),
        ("run", {"dry_run": True}),
        ("run", {"dry_run": True, "allow_remove": True, "verified": False, "limit": 21}),
    ],
)
async def test_the_report_path_writes_what_the_row_by_row_path_writes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ext: str,
    command: str,
    overrides: dict[str, Any],
) -> None:
    emulator = make_emulator([])
    new, old, fast, slow = await _both(
        emulator, monkeypatch, command, _input(tmp_path), tmp_path, ext, **overrides
    )
    assert _content(new) == _content(old)
    assert fast.counts == slow.counts and fast.exit_code == slow.exit_code == 1
    assert fast.input_rows == slow.input_rows
    assert sum(emulator.stats("P2batchphoneIssue6Project000000").requests.values()) == 0
    assert not journal_path(new).exists()  # nothing to resume: no journal is left behind


@pytest.mark.usefixtures("fixed_clock")
async def test_every_local_reason_is_in_the_mixed_file(tmp_path: Path) -> None:
    """The equivalence above covers every reason a job that sends nothing can write."""
    source = open_input(InputSpec(_input(tmp_path)))
    seen: set[str] = set()
    for allow_remove in (False, True):
        rules = RowRules(mode=Mode.DRY_RUN, allow_remove=allow_remove)
        preparer = Preparer(rules, source.repeated_login_ids())
        seen |= {cells.reason for cells in report_rows(source, preparer) if cells.reason}
    local = {reason.value for reason in Reason} - {
        reason.value
        for reason in (
            Reason.USER_NOT_FOUND,
            Reason.PHONE_CONFLICT,
            Reason.RETRIES_EXHAUSTED,
            Reason.REJECTED,
            Reason.UNAUTHORIZED,
            Reason.STOPPED,
            Reason.INTERRUPTED,
            Reason.CIRCUIT_OPEN,
            Reason.CHANGED_SINCE,
            Reason.NOT_UPDATED,
            Reason.NO_BEFORE_IMAGE,
            Reason.CANARY_MISMATCH,
            Reason.VERIFIED_ONLY,  # known only once the user was read
            # a call's answer, or a read of its user after the answer was lost
            Reason.IN_FLIGHT,
            Reason.ANSWER_LOST,
            Reason.CONFIRMED_BY_READ,
            Reason.NOT_APPLIED,
            Reason.ANSWER_MISMATCH,
            Reason.REFORMATTED,
            Reason.SAME_NUMBER,
            Reason.UNREACHABLE,
        )
    }
    assert seen == local


async def test_an_old_journal_at_the_result_path_is_replaced_as_before(tmp_path: Path) -> None:
    """A dry run's journal from an earlier run is discarded and none is left behind."""
    emulator = make_emulator([])
    source = _input(tmp_path)
    out = tmp_path / "r.csv"
    await run_job(emulator, "run", source, out, dry_run=True, local=False)
    assert journal_path(out).exists()  # the row-by-row path keeps it
    summary = await run_job(emulator, "run", source, out, dry_run=True)
    assert not journal_path(out).exists()
    assert summary.counts["would_update"] > 0 and summary.resumed_rows == 0


def test_progress_sees_every_row(tmp_path: Path) -> None:
    """A listener (the CLI's bar) still gets each row's result; a quiet run builds none."""
    seen: list[RowResult] = []

    class Recorder:
        def start(self, total: int, *, done: int, calls_per_second: float | None) -> None:
            assert (total, done, calls_per_second) == (len(ROWS), 0, None)

        def advance(self, result: RowResult) -> None:
            seen.append(result)

        def paused(self, seconds: float, *, calls_per_second: float | None = None) -> None:
            raise AssertionError("nothing is sent")

        def close(self) -> None:
            seen.append(None)  # type: ignore[arg-type]

    batchphone.validate(_input(tmp_path), out=tmp_path / "r.csv", progress=Recorder())
    assert [r.row for r in seen[:-1]] == list(range(1, len(ROWS) + 1))
    assert seen[-1] is None
    assert seen[0].status is Status.VALID and seen[3].reason is Reason.MISSING_REGION


@pytest.mark.parametrize("with_out", [True, False])
def test_without_a_listener_no_row_result_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_out: bool
) -> None:
    """No bar (``--quiet``, JSON logs): no result object per row is built (a million of them
    cost validate a fifth of its time), also when the summary lists the rows not valid."""
    from batchphone.modes import report

    def refuse(values: object) -> RowResult:
        raise AssertionError("no row result without a listener")

    monkeypatch.setattr(report, "_result", refuse)
    out = tmp_path / "r.csv" if with_out else None
    summary = batchphone.validate(_input(tmp_path), out=out)
    assert sum(summary.counts.values()) == len(ROWS)
    if with_out:
        assert summary.not_valid is None
    else:
        assert summary.not_valid and summary.not_valid[0].reason == "MISSING_REGION"


def test_ctrl_c_stops_a_validate_at_once_and_keeps_the_earlier_result(tmp_path: Path) -> None:
    """No journal to resume from: the run stops, exits 130, and replaces no result file."""
    import os
    import signal
    import subprocess
    import sys

    source = tmp_path / "big.csv"
    rows = 400_000
    pl.DataFrame(
        {
            "loginId": [f"user{i}@example.com" for i in range(rows)],
            "phone": [f"({200 + i % 700}) 555-{i % 10_000:04d}" for i in range(rows)],
            "region": ["US"] * rows,
        }
    ).write_csv(source)
    out = tmp_path / "report.csv"
    out.write_text("the earlier report\n")
    argv = [sys.executable, "-m", "batchphone", "validate", str(source), "--out", str(out)]
    with subprocess.Popen(
        [*argv, "--log-format", "json"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stderr is not None
        for line in process.stderr:  # rows are being judged once the run has started
            if "run_started" in line:
                break
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    # nothing to resume: no journal; the way on is to run it again (said by the summary, which
    # a signal that comes before the run watches for signals, under load, cuts short)
    assert "to resume" not in stderr
    if '"event": "summary"' in stderr:
        assert "run the same command again" in stderr
    assert out.read_text() == "the earlier report\n"
    # the lock file stays (h1: never unlinked); no journal, no temp file
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "big.csv",
        "report.csv",
        "report.csv.lock",
    ]


def test_validate_without_out_creates_no_file_or_folder_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows hold personal data: a validate with no report file must not write one, not even a
    temporary one that is deleted afterwards."""
    import os

    import batchphone

    source = tmp_path / "in.csv"
    pl.DataFrame(ROWS).write_csv(source)
    created: list[str] = []
    real_open, real_mkdir = os.open, os.mkdir

    def spy_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            created.append(str(path))
        return real_open(path, flags, *args, **kwargs)

    def spy_mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        created.append(str(path))
        real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "mkdir", spy_mkdir)
    summary = batchphone.validate(source, default_region="US")
    assert created == []
    assert summary.result_path is None and summary.input_rows == len(ROWS)
    assert summary.counts["valid"] >= 2 and summary.counts["invalid"] >= 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


async def test_run_started_has_the_same_fields_on_both_paths(tmp_path: Path) -> None:
    """A log pipeline keyed on run_started fields must not see other keys for a validate."""
    from structlog.testing import capture_logs

    source = _input(tmp_path)
    emulator = make_emulator([{"loginId": r["loginId"]} for r in ROWS[:3]])
    with capture_logs() as events:
        await run_job(emulator, "validate", source, tmp_path / "v.csv")
        await run_job(emulator, "run", source, tmp_path / "r.csv")
    started = [e for e in events if e["event"] == "run_started"]
    assert [e["command"] for e in started] == ["validate", "run"]
    assert set(started[0]) == set(started[1])
    assert started[0]["lookup"] is False
