"""8. The budget under arrival jitter, and 9. one budget shared by two runs (issue 12).

8: ``run`` (per row) and ``run --api batch``, 10 runs each, at 30 calls per 1 s against an
emulator that delays every call a random 0-80 ms before its budget counts it (a CDN in front):
a limiter that frees a slot one window after the answer draws no 429. Then the budget use at a
5 s window with 20 ms latency.

9: two runs started 1 s apart against one project at 30/1 s, with the file store and with
Redis: no 429, combined budget use, and the two runs' shares while both ran (told apart by the
login ids each one updates).

Budget use is ``W`` divided by the mean time from each call to the call N later: how long the
budget takes to renew a slot (``W`` plus the latency for this limiter). Unlike calls over the
run's span it does not depend on how the first and last windows' calls are spread.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import data
from bench.context import Bench
from bench.harness import EmulatorProcess, measure
from bench.report import Row

__all__ = ["jitter", "shared"]

_LICENSE = "/v1/mgmt/license"
_JITTER_S = 0.08


def _budget_calls(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The emulator's log entries of calls its budget counted (all but the license call)."""
    return sorted((e for e in doc["log"] if e["path"] != _LICENSE), key=lambda e: e["t"])


def _use(times: list[float], calls: int, window: float) -> float | None:
    """``window`` over the mean gap from each call to the call ``calls`` later."""
    if len(times) <= calls:
        return None
    gaps = [times[i + calls] - times[i] for i in range(len(times) - calls)]
    return window / (sum(gaps) / len(gaps))


def _input(bench: Bench, first: int, rows: int) -> Path:
    """``loginId,phone`` for users ``first .. first + rows - 1``."""
    path = bench.workdir / f"users-{first}-{rows}.csv"
    if not path.exists():
        lines = [f"user{i}@example.com,{data.update_phone(i)}" for i in range(first, first + rows)]
        path.write_text("loginId,phone\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def _run_argv(bench: Bench, input_path: Path, rate: str, tag: str, *extra: str) -> list[str]:
    out = bench.workdir / f"result-{tag}.csv"
    return bench.python(
        "-m", "batchphone", "run", str(input_path), "--out", str(out), "--restart", "--quiet",
        "--concurrency", "8", "--rate", rate, *extra,
    )  # fmt: skip


def jitter(bench: Bench) -> None:
    """8. Zero 429s at 30/1 s under 0-80 ms arrival jitter; budget use at 5 s / 20 ms."""
    rate = "30/1"
    modes = {"run": (120, ()), "run --api batch": (6000, ("--api", "batch"))}
    for mode, (rows, extra) in modes.items():
        input_path = _input(bench, 0, rows)
        rate_limited = blocks = 0
        uses: list[float] = []
        for attempt in range(bench.plan.jitter_runs):
            with EmulatorProcess(
                bench.key,
                users=rows,
                rate=rate,
                penalty=1.0,
                arrival_jitter=_JITTER_S,
                seed=attempt,
            ) as emulator:
                argv = _run_argv(bench, input_path, rate, f"jitter-{attempt}", *extra)
                measured = measure(argv, env=emulator.env(), cwd=bench.root)
                doc = emulator.stats()
            if measured.returncode != 0:
                bench.notes.append(f"`{measured.command}` exited {measured.returncode}")
            rate_limited += doc["rateLimited"]
            blocks += doc["blocks"]
            use = _use([e["t"] for e in _budget_calls(doc)], 30, 1.0)
            if use is not None:
                uses.append(use)
        bench.add(
            Row(
                "8 budget, 0-80 ms arrival jitter, 30/1 s",
                f"batchphone {mode}",
                f"429s in {bench.plan.jitter_runs} runs",
                rate_limited,
                target="0",
                met=rate_limited == 0,
                note=f"{blocks} blocks; budget use {min(uses, default=0):.3f}-"
                f"{max(uses, default=0):.3f}; {rows} rows per run",
            )
        )
    rows = 250
    with EmulatorProcess(bench.key, users=rows, rate="50/5", penalty=5.0, latency=0.02) as emu:
        argv = _run_argv(bench, _input(bench, 0, rows), "50/5", "use-5s")
        measure(argv, env=emu.env(), cwd=bench.root)
        doc = emu.stats()
    use = _use([e["t"] for e in _budget_calls(doc)], 50, 5.0)
    bench.add(
        Row(
            "8 budget use, 50/5 s, 20 ms latency",
            "batchphone run",
            "budget use",
            use,
            target=">= 0.98",
            met=use is not None and use >= 0.98 and doc["rateLimited"] == 0,
            note=f"{doc['rateLimited']} × 429; {len(_budget_calls(doc))} calls",
        )
    )


@contextmanager
def _redis() -> Iterator[str | None]:
    """A redis-server on a free loopback port, or ``None`` when it cannot be started."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def shared(bench: Bench) -> None:
    """9. Two runs 1 s apart on one project at 30/1 s: no 429, budget use, fair shares."""
    rows = 300
    inputs = [_input(bench, 0, rows), _input(bench, rows, rows)]
    with _redis() as redis_url:
        stores = {"file store": "file", "Redis store": redis_url}
        for label, store in stores.items():
            if store is None:
                bench.notes.append("9: redis-server could not be started: Redis store not run")
                continue
            _two_runs(bench, label, store, inputs, rows)


def _two_runs(bench: Bench, label: str, store: str, inputs: list[Path], rows: int) -> None:
    with EmulatorProcess(bench.key, users=2 * rows, rate="30/1", penalty=1.0, latency=0.02) as emu:
        procs = []
        for i, input_path in enumerate(inputs):
            argv = _run_argv(bench, input_path, "30/1", f"shared-{i}", "--budget-store", store)
            procs.append(subprocess.Popen(argv, env=emu.env(), cwd=bench.root))
            if i == 0:
                time.sleep(1.0)
        codes = [proc.wait(600) for proc in procs]
        doc = emu.stats()
    if any(codes):
        bench.notes.append(f"9 {label}: exit codes {codes}")
    calls = _budget_calls(doc)
    use = _use([e["t"] for e in calls], 30, 1.0)

    def run_of(entry: dict[str, Any]) -> int | None:
        login = entry.get("loginId") or ""
        if not login.startswith("user"):
            return None
        return 0 if int(login[4:].split("@")[0]) < rows else 1

    times = [[e["t"] for e in calls if run_of(e) == i] for i in (0, 1)]
    both = (times[1][0], min(times[0][-1], times[1][-1])) if all(times) else (0.0, 0.0)
    shares = [sum(both[0] <= t <= both[1] for t in run) for run in times]
    fair = min(shares) / max(shares) if max(shares) else 0.0
    scenario = f"9 two runs 1 s apart, 30/1 s, {label}"
    bench.add(
        Row(
            scenario,
            "batchphone run x2",
            "429s",
            doc["rateLimited"],
            target="0",
            met=doc["rateLimited"] == 0,
            note=f"{doc['blocks']} blocks; max {doc['maxWindowCalls']}/window",
        )
    )
    bench.add(
        Row(
            scenario,
            "batchphone run x2",
            "combined budget use",
            use,
            target=">= 0.95",
            met=use is not None and use >= 0.95,
            note=f"{len(calls)} calls",
        )
    )
    bench.add(
        Row(
            scenario,
            "batchphone run x2",
            "smaller share ÷ larger, both running",
            fair,
            target=">= 0.8",
            met=fair >= 0.8,
            note=f"calls while both ran: {shares[0]} and {shares[1]} in {both[1] - both[0]:.1f} s",
        )
    )
