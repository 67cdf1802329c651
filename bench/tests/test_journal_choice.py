"""Tests of scenario 11 (the journal: JSONL against sqlite3) and of results.md's kept section.

No timed assertion: the figures belong in results.md.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from batchphone.files.journal import Journal, iter_records, journal_path
from batchphone.files.results import result_rows
from batchphone.files.writer import write_results, write_rows
from batchphone.models import Reason, Status
from bench.context import Bench, Plan
from bench.journal_choice import (
    COLUMNS,
    IDENTITY,
    journal_choice,
    result,
    sqlite_path,
)
from bench.report import KEPT_HEADING, Row, write_markdown
from bench.sqlite_journal import SqliteJournal

ROOT = Path(__file__).resolve().parents[2]
TINY = Plan(
    journal_rows=(200, 1_000),
    journal_repeats=1,
    journal_kills=1,
    journal_kill_s=0.03,
    journal_validate_rows=100,
)


def test_the_scenario_at_a_tiny_size_has_its_rows_and_loses_nothing(tmp_path: Path) -> None:
    bench = Bench(plan=TINY, workdir=tmp_path, key="unused", root=ROOT)
    journal_choice(bench)
    table = {(row.scenario, row.tool, row.figure): row for row in bench.rows}
    appended = [
        ("200 rows", "JSONL Journal, per-row"),
        ("200 rows", "sqlite WAL, commit per row"),
        ("200 rows", "JSONL Journal, batch 100/call"),
        ("200 rows", "sqlite WAL, commit per call (100 rows)"),
        ("1,000 rows", "JSONL Journal, batch 100/call"),
        ("1,000 rows", "sqlite WAL, commit per call (100 rows)"),
    ]
    expected = {
        (f"11 journal append {size}", tool, figure)
        for size, tool in appended
        for figure in ("µs / answered row", "share of a row's budget")
    }
    expected |= {
        ("11 journal append 200 rows", tool, "WAL pages per commit")
        for tool in ("sqlite WAL, commit per row", "sqlite WAL, commit per call (100 rows)")
    }
    kills = ("JSONL Journal", "sqlite WAL, commit per row", "control: JSONL, urgent=False")
    expected |= {("11 journal kill -9", tool, "acknowledged rows lost") for tool in kills}
    expected |= {
        ("11 journal resume 1,000 records", tool, "open + resume state")
        for tool in ("JSONL Journal.open", "sqlite SELECT row, status")
    }
    writes = ("write_results (merge sort)", "write_rows(ORDER BY row)")
    expected |= {
        ("11 journal write CSV 1,000 rows", tool, figure)
        for tool in writes
        for figure in ("wall", "peak RSS")
    }
    expected |= {
        ("11 journal write CSV 1,000 rows", "both", "byte-identical result files"),
        ("11 journal validate", "batchphone validate", "journal records written"),
    }
    assert set(table) == expected, set(table) ^ expected
    for tool in kills[:2]:
        killed = table["11 journal kill -9", tool, "acknowledged rows lost"]
        assert killed.value == 0 and killed.met is True, killed
        acknowledged = re.search(r"([\d,]+) rows acknowledged", killed.note)
        # the child appended before it was killed
        assert acknowledged and int(acknowledged[1].replace(",", "")) > 0, killed
    # the control lost rows: the kill test can see a loss
    control = table["11 journal kill -9", kills[2], "acknowledged rows lost"]
    assert control.met is True, control
    missed = [row for row in bench.rows if row.met is False]
    assert not missed, missed
    validated = table["11 journal validate", "batchphone validate", "journal records written"]
    assert validated.value == 0, validated
    resumed = table["11 journal resume 1,000 records", "JSONL Journal.open", "open + resume state"]
    assert "1,000 final rows, 10 call times" in resumed.note, resumed
    # nothing big is left behind in the work directory
    assert not list((tmp_path / "journal").glob("append-*"))
    assert not list((tmp_path / "journal").glob("result-*"))


def test_sqlite_keeps_the_last_record_of_a_row_and_writes_what_the_jsonl_path_writes(
    tmp_path: Path,
) -> None:
    # a resumed run: rows 1-5, then row 3 again (it failed, --retry-failed updated it), row 6
    failed = dataclasses.replace(
        result(3),
        status=Status.FAILED,
        reason=Reason.RETRIES_EXHAUSTED,
        http_status=500,
        error_message="=cmd|' /C calc'!A0",  # a formula: defused the same way by both
        attempts=3,
        user_id=None,
        verified_phone=None,
        user_json=None,
        extra={},
    )
    order = [result(1), result(2), failed, result(4), result(5), result(3), result(6)]
    out = tmp_path / "r.csv"
    journal = Journal.open(out, IDENTITY)
    sqlite = SqliteJournal(sqlite_path(out), COLUMNS, IDENTITY.header())
    for one in order:
        journal.append(one, ts=1.0, urgent=True)
        sqlite.append(one, ts=1.0)
    journal.close()
    assert [status for (status,) in sqlite.db.execute("SELECT status FROM results")] == [
        "updated"
    ] * 6
    state = sqlite.state()
    assert [state.status(row) for row in range(1, 7)] == [Status.UPDATED] * 6
    from_jsonl, from_sqlite = tmp_path / "a.csv", tmp_path / "b.csv"
    write_results(result_rows(iter_records(journal_path(out))), from_jsonl, columns=COLUMNS)
    write_rows(sqlite.rows(), from_sqlite, columns=COLUMNS)
    sqlite.close()
    assert from_jsonl.read_bytes() == from_sqlite.read_bytes()
    assert sqlite_path(out).stat().st_mode & 0o777 == 0o600


def _markdown(path: Path, rows: list[Row]) -> None:
    described = {"date": "d", "cores": "2"}
    write_markdown(path, rows, described=described, mode="q", command="c", elapsed_s=1, notes=[])


def test_a_rerun_keeps_the_hand_written_decisions_section(tmp_path: Path) -> None:
    path = tmp_path / "results.md"
    rows = [Row("11 journal kill -9", "JSONL Journal", "acknowledged rows lost", 0.0)]
    kept = f"{KEPT_HEADING}\n\n### 11 journal\n\nDecision: keep JSONL.\n"
    path.write_text("# old generated text\n\n| old | table |\n\n" + kept, encoding="utf-8")
    _markdown(path, rows)
    text = path.read_text(encoding="utf-8")
    assert "old generated text" not in text
    assert "| 11 journal kill -9 | JSONL Journal |" in text
    assert text.endswith("\n" + kept)
    # a file without the section gains none; a second rerun keeps it once
    _markdown(path, rows)
    assert path.read_text(encoding="utf-8").splitlines().count(KEPT_HEADING) == 1
    other = tmp_path / "other.md"
    _markdown(other, rows)
    assert KEPT_HEADING not in other.read_text(encoding="utf-8").splitlines()
