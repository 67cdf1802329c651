"""Tests of scenario 7 (batch vs per-row): result files, row counting, the comparison, the run.

No timed assertion: the rates belong in results.md.
"""

from __future__ import annotations

import csv
import datetime as dt
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchphone.emulator import Emulator, ProjectSettings, generate_users
from batchphone.emulator.server import ServerThread
from bench import data
from bench.batch_mode import (
    BATCH_PATH,
    Outcome,
    batch_vs_per_row,
    differences,
    read_results,
    updated_times,
)
from bench.context import Bench, Plan
from bench.harness import PROJECT_ID, EmulatorProcess, sustained_rate

KEY = "K2benchbatchkey"
_COLUMNS = ("row", "loginId", "phone", "status", "verified_phone", "finished_at")


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, _COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _row(
    i: int, *, status: str = "updated", stamp: str = "2026-11-28T03:22:24.260Z"
) -> dict[str, Any]:
    login_id = f"user{i}@example.com"
    return {
        "row": i + 1,
        "loginId": login_id,
        "phone": data.update_phone(i),
        "status": status,
        "verified_phone": "false",
        "finished_at": stamp,
    }


def test_read_results_gives_each_row_its_finished_instant(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "r.csv",
        [_row(0), _row(1, status="failed", stamp=""), _row(2, stamp="2026-11-28T03:22:25.010Z")],
    )
    results = read_results(path)
    expected = dt.datetime(2026, 11, 28, 3, 22, 24, 260_000, tzinfo=dt.UTC).timestamp()
    assert results["user0@example.com"] == Outcome(
        "updated", data.update_phone(0), "false", expected
    )
    assert results["user1@example.com"].finished_ts is None
    # only updated rows count, in time order
    assert updated_times(results) == [expected, expected + 0.75]
    assert read_results(tmp_path / "absent.csv") == {}


def test_rows_are_counted_not_calls() -> None:
    # 50 patch calls per second, 100 rows finishing at each call's answer, for 4 seconds
    outcomes = {
        f"u{call}-{i}": Outcome("updated", "+1", "false", 1000.0 + call / 50)
        for call in range(200)
        for i in range(100)
    }
    assert sustained_rate(updated_times(outcomes)) == pytest.approx(5000, rel=0.01)


def test_differences_name_each_row_that_is_wrong() -> None:
    def outcome(phone: str, status: str = "updated", verified: str = "false") -> Outcome:
        return Outcome(status, phone, verified, 1.0)

    per_row = {"a": outcome("+1"), "b": outcome("+2"), "c": outcome("+3"), "d": outcome("+4")}
    batch = {**per_row, "e": outcome("+5")}
    assert differences(per_row, batch) == {}
    batch.update(b=outcome("+9"), c=outcome("+3", verified="true"), e=outcome("+5", "failed"))
    del batch["d"]
    per_row["a"] = outcome("+1", "conflict")
    found = differences(per_row, batch)
    assert found == {
        "a": "conflict in per-row mode",
        "b": "per-row +2 verified=false, batch +9 verified=false",
        "c": "per-row +3 verified=false, batch +3 verified=true",
        "d": "missing in batch mode",
        "e": "failed in batch mode",
    }


@pytest.fixture
def served() -> Iterator[str]:
    """The bench's project on an in-process emulator: 5 users, no limit."""
    project = ProjectSettings(PROJECT_ID, KEY, users=generate_users(5))
    with ServerThread(Emulator([project]), port=0) as base_url:
        yield base_url


def test_api_log_counts_the_users_a_batch_patch_updated(served: str) -> None:
    users = [{"loginId": f"user{i}@example.com", "phone": data.update_phone(i)} for i in (1, 3)]
    users.append({"loginId": "nobody@example.com", "phone": "+14155550100"})
    response = httpx.patch(
        served + BATCH_PATH,
        json={"users": users},
        headers={"Authorization": f"Bearer {PROJECT_ID}:{KEY}"},
    )
    assert response.status_code == 200
    emulator = EmulatorProcess(KEY, users=5)
    emulator.base_url = served  # read the served emulator's stats as the bench reads its own
    log = emulator.api_log()
    assert log.users_updated == 2  # the unknown user failed inside the 200
    assert log.paths == {BATCH_PATH: 1}
    assert log.updates_ok == ()  # no update/phone call: the per-row log would count nothing


def test_the_scenario_runs_both_modes_and_compares_their_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = Plan(budget_rows=30, batch_rows=250, budget_concurrency=1)
    root = Path(__file__).resolve().parents[2]
    bench = Bench(plan=plan, workdir=tmp_path, key=secrets.token_urlsafe(16), root=root)
    profiled: list[str] = []
    monkeypatch.setattr(bench, "profile", lambda title, *_, **__: profiled.append(title))
    batch_vs_per_row(bench)
    by_figure = {(row.tool, row.figure): row for row in bench.rows}
    per_row = by_figure[("batchphone", "rows/s, API phase")]
    batch = by_figure[("batchphone --api batch", "rows/s, API phase")]
    # every run reads first: 1 search for the 30 login ids and 1 phone check
    assert per_row.note.startswith("30 rows; 32 calls (2 search); 0 × 429")
    # 250 rows: 3 patch calls, 3 reads of 100 login ids and the phone check
    assert batch.note.startswith("250 rows; 7 calls (3 patch/batch, 4 search)")
    agree = by_figure[("batch vs per-row", "rows that differ")]
    assert (agree.value, agree.met) == (0.0, True)
    assert agree.note == "30 login ids in both: updated, same phone and verified"
    assert by_figure[("batchphone --api batch", "× per-row (API phase)")].target == ">= 50x"
    assert not bench.notes
    assert len(read_results(bench.result_path(data.update_csv(tmp_path, 250), 1, "batch"))) == 250
