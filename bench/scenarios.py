"""Scenarios 1-6 (issue 5), 7 (``bench.batch_mode``), 8-9 (``bench.shared_budget``), 10
(``bench.lookups``), 11 (``bench.journal_choice``).

API scenarios start a fresh emulator per measurement (no budget window, block or request log
leaks between tools); baselines get batchphone's inputs, concurrency and emulator settings.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bench import data
from bench.batch_mode import batch_vs_per_row
from bench.context import NO_LIMIT, Bench
from bench.harness import ApiLog, measure
from bench.journal_choice import journal_choice
from bench.lookups import lookup_cost
from bench.report import Row
from bench.shared_budget import jitter, shared

__all__ = ["SCENARIOS"]


def _checked(tool: str, rows: int, log: ApiLog) -> str:
    """A note when a tool did not update every row (the figure then means less)."""
    done = len(log.updates_ok)
    return "" if done == rows else f"{tool} updated only {done} of {rows} rows"


def budget(bench: Bench) -> None:
    """1. Budget use: a time-scaled Descope budget, 1,000 rows, every tool in turn."""
    plan = bench.plan
    rate = plan.budget_calls / plan.budget_window_s
    limit = f"{plan.budget_calls}/{plan.budget_window_s:g}"
    rows = plan.budget_rows
    input_path = data.update_csv(bench.workdir, rows)
    scenario = f"1 budget {limit} s"
    figures: dict[str, float] = {}
    for tool in ("batchphone", "sdk_async", "sdk_loop"):
        argv = (
            bench.batchphone_run(input_path, plan.budget_concurrency, limit)
            if tool == "batchphone"
            else bench.baseline(tool, input_path, plan.budget_concurrency)
        )
        measured, log, _ = bench.api_run(
            argv, users=rows, rate=limit, penalty=plan.budget_penalty_s
        )
        sustained = log.sustained
        figures[tool] = sustained or 0.0
        mine = tool == "batchphone"
        note = f"{log.rate_limited} × 429; {log.blocks} blocks; max {log.max_window_calls}/window"
        tightest = log.tightest(plan.budget_calls)
        if log.blocks and tightest is not None:
            note += f"; {plan.budget_calls + 1} calls seen within {tightest * 1000:.0f} ms"
        if problem := _checked(tool, rows, log):
            note += f"; {problem}"
        bench.add(
            Row(
                scenario,
                tool,
                "rows/s, API phase",
                sustained,
                unit="rows/s",
                bound=rate,
                bound_label="budget",
                target=">= 0.97, 0 blocks" if mine else "",
                met=(sustained or 0) >= 0.97 * rate and log.blocks == 0 if mine else None,
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
                bound=rate,
                bound_label="budget",
                note=f"{measured.wall_s:.1f} s for {rows} rows",
            )
        )
    for other in ("sdk_async", "sdk_loop"):
        speedup = figures["batchphone"] / figures[other] if figures[other] else None
        bench.add(Row(scenario, "batchphone", f"× {other} (API phase)", speedup, unit="x"))


def latency(bench: Bench) -> None:
    """2. Latency-bound: 100 ms answers, no limit, rows/s against Little's bound."""
    plan = bench.plan
    for concurrency in plan.latency_concurrency:
        rows = concurrency * plan.latency_periods
        input_path = data.update_csv(bench.workdir, rows)
        bound = concurrency / plan.latency_s
        tools = ["batchphone", "sdk_async"] + (["sdk_loop"] if concurrency == 1 else [])
        for tool in tools:
            argv = (
                bench.batchphone_run(input_path, concurrency, NO_LIMIT)
                if tool == "batchphone"
                else bench.baseline(tool, input_path, concurrency)
            )
            measured, log, _ = bench.api_run(argv, users=rows, latency=plan.latency_s)
            sustained = log.sustained
            span = log.api_span_s or measured.wall_s
            # CPU is the limit when the client was busy most of the API phase
            busy = measured.cpu_s / measured.wall_s
            mine = tool == "batchphone"
            note = f"{rows} rows; client CPU {busy:.0%} of a core"
            if problem := _checked(tool, rows, log):
                note += f"; {problem}"
            name = f"{tool} c={concurrency}"
            bench.add(
                Row(
                    "2 latency 100 ms",
                    name,
                    "rows/s, API phase",
                    sustained,
                    unit="rows/s",
                    bound=bound,
                    bound_label="c/latency",
                    target=">= 0.9" if mine else "",
                    met=(sustained or 0) >= 0.9 * bound if mine else None,
                    note=note,
                )
            )
            if mine and (sustained or 0) < 0.9 * bound:
                # ten periods show the steady state; the measured run may be longer
                sample = data.update_csv(bench.workdir, concurrency * 10)
                bench.profile(
                    f"2 latency c={concurrency}: batchphone (missed)",
                    bench.batchphone_run(sample, concurrency, NO_LIMIT),
                    users=concurrency * 10,
                    latency=plan.latency_s,
                )
            bench.add(
                Row(
                    "2 latency 100 ms",
                    name,
                    "rows/s, wall",
                    rows / measured.wall_s,
                    unit="rows/s",
                    bound=bound,
                    bound_label="c/latency",
                    note=f"API phase {span:.2f} s, wall {measured.wall_s:.2f} s",
                )
            )


def cpu(bench: Bench) -> None:
    """3. CPU-bound: zero latency, no limit, concurrency 16; rows/s and CPU per 1,000 rows."""
    plan = bench.plan
    c = plan.cpu_concurrency
    scenario = f"3 cpu c={c}"
    big, small = plan.cpu_rows, plan.cpu_sdk_rows

    def command(tool: str, rows: int) -> list[str]:
        input_path = data.update_csv(bench.workdir, rows)
        if tool == "batchphone":
            return bench.batchphone_run(input_path, c, NO_LIMIT)
        if tool == "httpx_raw per-worker":
            return [*bench.baseline("httpx_raw", input_path, c), "--clients", "per-worker"]
        return bench.baseline(tool, input_path, c)

    floor: tuple[float, float, float | None] = (0.0, 0.0, None)
    for tool, rows in (
        ("httpx_raw", big),
        ("batchphone", big),
        ("sdk_async", small),
        ("sdk_loop", small),
        ("httpx_raw per-worker", small),
    ):
        measured, log, server_cpu = bench.api_run(command(tool, rows), users=rows)
        wall_rate = rows / measured.wall_s
        per_1000 = measured.cpu_s / rows * 1000
        if tool == "httpx_raw":
            floor = (wall_rate, per_1000, log.sustained)
        mine = tool == "batchphone"
        note = (
            f"{rows} rows in {measured.wall_s:.1f} s; emulator CPU "
            f"{server_cpu / rows * 1000:.2f} s/1000; peak RSS {measured.max_rss_mb:.0f} MB"
        )
        if tool == "sdk_loop":
            note += "; sequential, a new connection per call"
        if problem := _checked(tool, rows, log):
            note += f"; {problem}"
        bench.add(
            Row(
                scenario,
                tool,
                "rows/s, wall",
                wall_rate,
                unit="rows/s",
                bound=floor[0],
                bound_label="httpx_raw",
                target=">= 0.8 x httpx_raw" if mine else "",
                met=wall_rate >= 0.8 * floor[0] if mine else None,
                note=note,
            )
        )
        bench.add(
            Row(
                scenario,
                tool,
                "rows/s, API phase",
                log.sustained,
                unit="rows/s",
                bound=floor[2],
                bound_label="httpx_raw",
            )
        )
        # the CPU twin of the 0.8 rows/s target: 1/0.8 = 1.25 times the floor's CPU per row
        bench.add(
            Row(
                scenario,
                tool,
                "client CPU s / 1000 rows",
                per_1000,
                unit="s",
                bound=floor[1],
                bound_label="httpx_raw",
                target="<= 1.25 x httpx_raw" if mine else "",
                met=per_1000 <= 1.25 * floor[1] if mine else None,
            )
        )
    # where the client's CPU goes, for batchphone and for the floor it is held to
    for tool in ("batchphone", "httpx_raw"):
        rows = plan.profile_rows
        bench.profile(f"3 cpu c={c}: {tool}", command(tool, rows), users=rows)


def validate(bench: Bench) -> None:
    """4. Validate 1M rows against a bare phonenumbers loop over the same strings, for two mixes:
    the export mix (``mixed_csv``) and one where national numbers dominate (``national_csv``)."""
    rows = bench.plan.validate_rows
    for label, make in (("", data.mixed_csv), (" national", data.national_csv)):
        _validate_mix(bench, f"4 validate{label} {rows:,} rows", make, rows)


def _validate_mix(
    bench: Bench, scenario: str, make: Callable[[Path, int], Path], rows: int
) -> None:
    input_path = make(bench.workdir, rows)
    summary = bench.workdir / "validate-summary.json"
    report = bench.workdir / "validate-report.csv"
    argv = ["-m", "batchphone", "validate", str(input_path), "--out", str(report), "--quiet"]
    bares, mines = [], []
    for _ in range(bench.plan.validate_repeats):  # in turn: both see the same load
        bares.append(
            measure(
                bench.python("-m", "bench.baselines.phonenumbers_loop", str(input_path)),
                cwd=bench.root,
            )
        )
        mines.append(measure(bench.python(*argv, "--summary-json", str(summary)), cwd=bench.root))
    bare = min(bares, key=lambda m: m.wall_s)
    mine = min(mines, key=lambda m: m.wall_s)
    bare_doc = json.loads(bare.stdout.strip().splitlines()[-1])
    bare_rate = rows / bare.wall_s
    counts = json.loads(summary.read_text())["counts"] if summary.exists() else {}
    fastest = f"fastest of {len(mines)}, {', '.join(f'{m.wall_s:.1f}' for m in mines)} s"
    rate = rows / mine.wall_s
    bench.add(
        Row(
            scenario,
            "batchphone validate",
            "rows/s, wall",
            rate,
            unit="rows/s",
            bound=bare_rate,
            bound_label="bare loop",
            target=">= 1.0 x bare loop",
            met=rate >= bare_rate,
            note=f"{mine.wall_s:.1f} s ({fastest}); valid {counts.get('valid', 0):,}, "
            f"invalid {counts.get('invalid', 0):,}; writes the report",
        )
    )
    if rate < bare_rate:
        # a fifth of the rows is enough to see where the time goes
        sample = make(bench.workdir, rows // 5)
        argv = ["-m", "batchphone", "validate", str(sample), "--out", str(report), "--quiet"]
        title = scenario.replace(f"{rows:,}", f"{rows // 5:,}")
        bench.profile(f"{title}: batchphone (missed)", bench.python(*argv))
    loop_rate = rows / bare_doc["loop_s"]
    bench.add(
        Row(
            scenario,
            "bare phonenumbers loop",
            "rows/s, wall",
            bare_rate,
            unit="rows/s",
            bound=bare_rate,
            bound_label="bare loop",
            note=f"{bare.wall_s:.1f} s (fastest of {len(bares)}, "
            f"{', '.join(f'{m.wall_s:.1f}' for m in bares)} s); valid {bare_doc['valid']:,}, "
            f"invalid {bare_doc['invalid']:,}; the loop alone {loop_rate:,.0f} rows/s",
        )
    )
    for tool, measured in (("batchphone validate", mine), ("bare phonenumbers loop", bare)):
        bench.add(Row(scenario, tool, "peak RSS", measured.max_rss_mb, unit="MB"))


def memory(bench: Bench) -> None:
    """5. Memory at scale: ``run --dry-run`` on 1M and 5M rows, peak RSS."""
    small, large = bench.plan.memory_rows
    peaks: dict[int, float] = {}
    for rows in (small, large):
        input_path = data.mixed_csv(bench.workdir, rows)
        out = bench.workdir / f"dry-run-{rows}.csv"
        argv = ["-m", "batchphone", "run", str(input_path), "--out", str(out)]
        measured = measure(bench.python(*argv, "--dry-run", "--restart", "--quiet"), cwd=bench.root)
        # the result file is GBs at 5M rows (a dry run keeps no journal; an older one did)
        for leftover in (out, out.with_name(out.name + ".journal")):
            leftover.unlink(missing_ok=True)
        peaks[rows] = measured.max_rss_mb
        scenario = f"5 memory {rows:,} rows"
        bench.add(
            Row(
                scenario,
                "batchphone dry-run",
                "peak RSS",
                measured.max_rss_mb,
                unit="MB",
                bound=400.0,
                bound_label="MB",
                target="< 400 MB",
                met=measured.max_rss_mb < 400.0,
                note=f"{measured.wall_s:.1f} s, {rows / measured.wall_s:,.0f} rows/s, "
                f"exit {measured.returncode}",
            )
        )
    growth = peaks[large] / peaks[small]
    bench.add(
        Row(
            f"5 memory {large // small}x rows",
            "batchphone dry-run",
            f"peak RSS {large:,} ÷ {small:,}",
            growth,
            unit="x",
            bound=1.3,
            bound_label="max",
            target="<= 1.3x",
            met=growth <= 1.3,
        )
    )


def startup(bench: Bench) -> None:
    """6. Start-up: ``batchphone --help`` and ``batchphone validate`` on a 10-row file."""
    script = Path(sys.executable).with_name("batchphone")
    command = [str(script)] if script.exists() else bench.python("-m", "batchphone")
    tiny = bench.workdir / "tiny.csv"
    lines = [f"user{i}@example.com,{data.update_phone(i)}\n" for i in range(10)]
    tiny.write_text("loginId,phone\n" + "".join(lines), encoding="utf-8")
    report = bench.workdir / "tiny-report.csv"
    repeats = bench.plan.startup_repeats
    measure([*command, "--help"], cwd=bench.root)  # warm the page cache and .pyc files first
    helps = [measure([*command, "--help"], cwd=bench.root).wall_s for _ in range(repeats)]
    validate_argv = [*command, "validate", str(tiny), "--out", str(report), "--quiet"]
    validates = [measure(validate_argv, cwd=bench.root).wall_s for _ in range(repeats)]
    help_s = statistics.median(helps)
    bench.add(
        Row(
            "6 start-up",
            "batchphone --help",
            "wall, median",
            help_s,
            unit="s",
            bound=0.2,
            bound_label="s",
            target="< 0.2 s",
            met=help_s < 0.2,
            note=f"median of {repeats}; min {min(helps):.3f} s",
        )
    )
    if help_s >= 0.2:
        _import_profile(bench, command)
    bench.add(
        Row(
            "6 start-up",
            "batchphone validate (10 rows)",
            "wall, median",
            statistics.median(validates),
            unit="s",
            note=f"median of {repeats}; min {min(validates):.3f} s",
        )
    )


def _import_profile(bench: Bench, command: list[str]) -> None:
    """The slowest imports of ``--help`` (``python -X importtime``), for a missed start-up."""
    script = command[0] if len(command) == 1 else None
    argv = (
        bench.python("-X", "importtime", script, "--help")
        if script is not None
        else bench.python("-X", "importtime", "-m", "batchphone", "--help")
    )
    done = subprocess.run(argv, cwd=bench.root, capture_output=True, text=True, check=False)
    cumulative: list[tuple[int, str]] = []
    for line in done.stderr.splitlines():
        # "import time:   self [us] | cumulative | imported package"
        parts = line.removeprefix("import time:").split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            cumulative.append((int(parts[1]), parts[2].rstrip()))
    top = sorted(cumulative, reverse=True)[:10]
    lines = [f"{us / 1000:.1f} ms cumulative: `{name.strip()}`" for us, name in top]
    bench.profiles.append(("6 start-up: imports of --help (missed)", lines))


SCENARIOS = {
    "budget": budget,
    "latency": latency,
    "cpu": cpu,
    "validate": validate,
    "memory": memory,
    "startup": startup,
    "batch": batch_vs_per_row,
    "lookups": lookup_cost,
    "jitter": jitter,
    "shared": shared,
    "journal": journal_choice,
}
