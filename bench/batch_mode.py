"""7. Batch vs per-row at the same budget (issue 6): ``run --api batch`` against ``run``.

Both runs face the emulator of scenario 1 (50 calls per 1 s, sliding, 1 s block), seeded with
the same generated users. A patch call carries up to 100 rows, so the emulator's log of calls
does not count rows: the rows/s of each mode is the slope of the ``finished_at`` times of the
``updated`` rows of its result file (the instant each row's answer came back), the same
yardstick for both modes. The two result files must then agree: every row ``updated`` in both,
the same E.164 number and verified flag for every login id they share.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench import data
from bench.context import Bench
from bench.harness import ApiLog, sustained_rate
from bench.report import Row

__all__ = [
    "BATCH_PATH",
    "SEARCH_PATH",
    "TARGET_RATIO",
    "Outcome",
    "batch_vs_per_row",
    "differences",
    "read_results",
    "updated_times",
]

BATCH_PATH = "/v1/mgmt/user/patch/batch"
SEARCH_PATH = "/v2/mgmt/user/search"
#: Issue 6: at the same request budget, batch mode moves at least this many times the rows/s.
TARGET_RATIO = 50.0
#: Rows of one patch call (batchphone's default ``--batch-size``, the API's assumed maximum).
_ROWS_PER_CALL = 100
_UPDATED = "updated"


@dataclass(frozen=True, slots=True)
class Outcome:
    """One row of a result file, as far as the comparison of the two modes goes."""

    status: str
    phone: str
    verified: str
    finished_ts: float | None  # epoch seconds of ``finished_at``; None when it is empty


def _epoch(text: str) -> float | None:
    # "2026-11-28T03:22:24.260Z": fromisoformat reads the Z from Python 3.11 on
    return dt.datetime.fromisoformat(text).timestamp() if text else None


def read_results(path: Path) -> dict[str, Outcome]:
    """The rows of a CSV result file by login id (an absent file has no rows)."""
    if not path.exists():
        return {}
    with path.open(newline="", encoding="utf-8") as f:
        return {
            row["loginId"]: Outcome(
                status=row["status"],
                phone=row["phone"],
                verified=row["verified_phone"],
                finished_ts=_epoch(row["finished_at"]),
            )
            for row in csv.DictReader(f)
        }


def updated_times(results: Mapping[str, Outcome]) -> list[float]:
    """When each ``updated`` row finished, ascending: rows against time, whatever the calls."""
    return sorted(r.finished_ts for r in results.values() if r.status == _UPDATED and r.finished_ts)


def differences(per_row: Mapping[str, Outcome], batch: Mapping[str, Outcome]) -> dict[str, str]:
    """What is wrong, by login id: a row not ``updated``, or the modes disagreeing on a user.

    Every row of both files must be ``updated``; a login id of the per-row file must be in the
    batch file with the same phone and verified flag (the batch run may cover more users).
    """
    found: dict[str, str] = {}
    for name, results in (("per-row", per_row), ("batch", batch)):
        for login_id, outcome in results.items():
            if outcome.status != _UPDATED:
                found.setdefault(login_id, f"{outcome.status} in {name} mode")
    for login_id, mine in per_row.items():
        theirs = batch.get(login_id)
        if theirs is None:
            found.setdefault(login_id, "missing in batch mode")
        elif (mine.phone, mine.verified) != (theirs.phone, theirs.verified):
            found.setdefault(
                login_id,
                f"per-row {mine.phone} verified={mine.verified}, "
                f"batch {theirs.phone} verified={theirs.verified}",
            )
    return found


def _calls(log: ApiLog) -> str:
    """The calls the server counted, by kind, and what the budget made of them."""
    kinds = {BATCH_PATH: "patch/batch", SEARCH_PATH: "search"}
    by_kind = [f"{n} {kinds[p]}" for p, n in sorted(log.paths.items()) if p in kinds]
    made = f"{log.calls} calls" + (f" ({', '.join(by_kind)})" if by_kind else "")
    return (
        f"{made}; {log.rate_limited} × 429; {log.blocks} blocks; max {log.max_window_calls}/window"
    )


def batch_vs_per_row(bench: Bench) -> None:
    """7. Batch vs per-row: rows/s of each at scenario 1's budget, their ratio, same results."""
    plan = bench.plan
    limit = f"{plan.budget_calls}/{plan.budget_window_s:g}"
    budget = plan.budget_calls / plan.budget_window_s
    scenario = f"7 batch vs per-row {limit} s"
    rates: dict[str, float | None] = {}
    results: dict[str, dict[str, Outcome]] = {}
    for api, tool, rows in (
        ("update", "batchphone", plan.budget_rows),
        ("batch", "batchphone --api batch", plan.batch_rows),
    ):
        input_path = data.update_csv(bench.workdir, rows)
        out = bench.result_path(input_path, plan.budget_concurrency, api)
        out.unlink(missing_ok=True)  # a run that fails must not be judged on an old file
        argv = bench.batchphone_run(input_path, plan.budget_concurrency, limit, api=api)
        # both emulators hold the batch run's users: per-row mode updates the first of them
        measured, log, _ = bench.api_run(
            argv, users=plan.batch_rows, rate=limit, penalty=plan.budget_penalty_s
        )
        results[api] = read_results(out)
        rates[api] = sustained_rate(updated_times(results[api]))
        note = f"{rows:,} rows; {_calls(log)}"
        if api == "update" and log.sustained:
            note += f"; emulator log {log.sustained:.1f} rows/s"
        if log.blocks:
            bench.notes.append(
                f"7: `run --api {api}` drew {log.rate_limited} × 429 and {log.blocks} block(s) "
                f"at {limit} s (max {log.max_window_calls} calls seen in one window)"
            )
        per_call = 1 if api == "update" else _ROWS_PER_CALL
        bench.add(
            Row(
                scenario,
                tool,
                "rows/s, API phase",
                rates[api],
                unit="rows/s",
                bound=budget * per_call,
                bound_label="budget" if per_call == 1 else f"{per_call} x budget",
                note=note,
            )
        )
        bench.add(
            Row(
                scenario,
                tool,
                "rows/s, wall",
                rows / measured.wall_s,
                unit="rows/s",
                bound=budget * per_call,
                bound_label="budget" if per_call == 1 else f"{per_call} x budget",
                note=f"{measured.wall_s:.1f} s for {rows:,} rows, exit {measured.returncode}",
            )
        )
    per_row_rate, batch_rate = rates["update"], rates["batch"]
    ratio = batch_rate / per_row_rate if batch_rate and per_row_rate else None
    met = ratio is not None and ratio >= TARGET_RATIO
    bench.add(
        Row(
            scenario,
            "batchphone --api batch",
            "× per-row (API phase)",
            ratio,
            unit="x",
            bound=TARGET_RATIO,
            bound_label="target",
            target=f">= {TARGET_RATIO:g}x",
            met=met,
        )
    )
    if not met:
        sample = data.update_csv(bench.workdir, plan.batch_rows)
        bench.profile(
            "7 batch: batchphone --api batch (missed)",
            bench.batchphone_run(sample, plan.budget_concurrency, limit, api="batch"),
            users=plan.batch_rows,
        )
    wrong = differences(results["update"], results["batch"])
    missing = [api for api, found in results.items() if not found]
    if missing:
        note = f"no result file from `run --api {'/'.join(missing)}`"
    elif wrong:
        note = "; ".join(f"{login_id}: {why}" for login_id, why in list(wrong.items())[:3])
    else:
        note = f"{len(results['update']):,} login ids in both: updated, same phone and verified"
    bench.add(
        Row(
            scenario,
            "batch vs per-row",
            "rows that differ",
            float(len(wrong)),
            target="0: all updated, same E.164",
            met=not wrong and not missing,
            note=note,
        )
    )
