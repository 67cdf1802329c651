"""What one bench run knows: its sizes (:class:`Plan`), where it works, and what it found.

:class:`Bench` also builds the command lines of batchphone and of the baselines, and runs one
client against a fresh emulator process, so the scenarios only say what to measure.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench import data
from bench.harness import ApiLog, EmulatorProcess, Measured, measure
from bench.profile import record
from bench.report import Row

__all__ = ["FULL", "NO_LIMIT", "QUICK", "Bench", "Plan", "warm_up"]

#: A budget no run reaches: "no limit" for the emulator and for batchphone's own limiter.
NO_LIMIT = "1000000/1"


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes of one bench run (``FULL`` or ``QUICK``); rates are figures, so sizes may shrink."""

    budget_rows: int = 1000
    budget_calls: int = 50
    budget_window_s: float = 1.0
    budget_penalty_s: float = 1.0
    budget_concurrency: int = 8
    latency_s: float = 0.1
    latency_concurrency: tuple[int, ...] = (1, 8, 32, 64)
    latency_periods: int = 20  # rows = concurrency * periods: the same duration at each point
    cpu_rows: int = 20_000
    cpu_sdk_rows: int = 5_000  # the SDK baselines are slower: their rate is steady by then
    cpu_concurrency: int = 16
    validate_rows: int = 1_000_000
    # validate and the bare loop run in turn this many times, fastest kept: a busy machine
    # slows one measurement, rarely the same tool twice
    validate_repeats: int = 2
    memory_rows: tuple[int, int] = (1_000_000, 5_000_000)
    startup_repeats: int = 7
    profile_rows: int = 3_000  # rows of the profiled reruns (a profile needs no full size)
    # scenario 7: per-row mode runs on budget_rows; batch mode on enough rows (100 per call)
    # to last several windows of the budget
    batch_rows: int = 20_000
    # scenario 11: answered rows appended (per-row mode at the first size, batch mode at
    # both; resume and write at the second), kill -9 rounds per format, validate's rows
    journal_rows: tuple[int, int] = (100_000, 1_000_000)
    journal_repeats: int = 2  # appends of the smaller size, in turn, fastest kept
    journal_kills: int = 10
    journal_kill_s: float = 0.4  # a child is killed up to this long after its first ack
    journal_seed: int = 11
    journal_validate_rows: int = 2_000
    # scenario 8: runs per mode under arrival jitter (a 429 is rare: more runs, more chances)
    jitter_runs: int = 10


FULL = Plan()
QUICK = Plan(
    budget_rows=300,
    latency_periods=12,
    cpu_rows=5_000,
    cpu_sdk_rows=1_500,
    validate_rows=200_000,
    memory_rows=(100_000, 500_000),
    startup_repeats=5,
    profile_rows=2_000,
    batch_rows=10_000,
    journal_rows=(20_000, 200_000),
    journal_repeats=2,
    journal_kills=5,
    jitter_runs=3,
)


@dataclass
class Bench:
    """One bench run: its plan, work directory and emulator key; collects rows and notes."""

    plan: Plan
    workdir: Path
    key: str = field(repr=False)
    root: Path
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: (title, markdown lines) of the profiles taken, for results.md
    profiles: list[tuple[str, list[str]]] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        """Record one figure (and echo it, so a long run shows progress)."""
        self.rows.append(row)
        ratio = f" ratio={row.ratio:.3f}" if row.ratio is not None else ""
        met = "" if row.met is None else f" met={row.met}"
        print(f"  {row.tool:<22} {row.figure:<28} {row.value}{ratio}{met}", flush=True)
        return row

    def python(self, *args: str) -> list[str]:
        """``python -m ...`` with the bench's own interpreter."""
        return [sys.executable, *args]

    def result_path(self, input_path: Path, concurrency: int, api: str = "update") -> Path:
        """Where :meth:`batchphone_run` writes its result file."""
        mode = "" if api == "update" else f"-{api}"
        return self.workdir / f"result-{input_path.stem}-c{concurrency}{mode}.csv"

    def batchphone_run(
        self, input_path: Path, concurrency: int, rate: str, *, api: str = "update"
    ) -> list[str]:
        """``python -m batchphone run`` as a user types it (fresh result file each time).

        ``api="batch"`` adds ``--api batch`` (100 rows per patch call).
        """
        out = self.result_path(input_path, concurrency, api)
        argv = ["-m", "batchphone", "run", str(input_path), "--out", str(out), "--restart"]
        argv += ["--concurrency", str(concurrency), "--rate", rate]
        if rate == NO_LIMIT:
            # no budget to share: the per-project store (a locked file rewritten on every take
            # and give-back, ~2-4 ms) would be measured instead of the client; the budget
            # scenarios (1, 8, 9) keep the default store
            argv += ["--budget-store", "none"]
        return self.python(*argv, *(["--api", api] if api != "update" else []))

    def baseline(self, name: str, input_path: Path, concurrency: int) -> list[str]:
        """``python -m bench.baselines.<name>`` over ``input_path``."""
        argv = self.python("-m", f"bench.baselines.{name}", str(input_path))
        if name != "httpx_raw":
            argv += ["--out", str(self.workdir / f"{name}-{input_path.stem}.csv")]
        if name != "sdk_loop":
            argv += ["--concurrency", str(concurrency)]
        return argv

    def api_run(
        self,
        argv: list[str],
        *,
        users: int,
        rate: str = NO_LIMIT,
        penalty: float = 1.0,
        latency: float = 0.0,
    ) -> tuple[Measured, ApiLog, float]:
        """Run a client against a fresh emulator: its measure, the API log, emulator CPU s."""
        with EmulatorProcess(
            self.key, users=users, rate=rate, penalty=penalty, latency=latency
        ) as emulator:
            before = emulator.cpu_s()
            # batchphone gets a terminal, as when run by hand, so its progress bar is paid for
            tty = argv[2] == "batchphone"
            measured = measure(argv, env=emulator.env(), cwd=self.root, tty=tty)
            log = emulator.api_log()
            server_cpu = emulator.cpu_s() - before
        if measured.returncode not in (0, 1) or not log.users_updated:
            self.notes.append(
                f"`{measured.command}` exited {measured.returncode}: {measured.stderr[-300:]!r}"
            )
        return measured, log, server_cpu

    def profile(
        self, title: str, argv: list[str], *, users: int | None = None, latency: float = 0.0
    ) -> None:
        """Rerun ``argv`` under py-spy (against a fresh emulator when ``users`` is given)."""
        print(f"  profiling: {title}", flush=True)
        out = self.workdir / f"profile-{len(self.profiles)}.raw"
        if users is None:
            found = record(argv, env=None, cwd=self.root, out=out)
        else:
            with EmulatorProcess(self.key, users=users, latency=latency) as emulator:
                found = record(argv, env=emulator.env(), cwd=self.root, out=out)
        command = " ".join(["python", *argv[1:]]).replace(str(self.workdir), "$WORKDIR")
        lines = [f"`{command}`"]
        lines += [found] if isinstance(found, str) else found.lines()
        self.profiles.append((title, lines))


def warm_up(bench: Bench) -> None:
    """Run every tool once on 10 rows: compiles their bytecode and fails fast if one is broken."""
    input_path = data.update_csv(bench.workdir, 10)
    for argv in (
        bench.batchphone_run(input_path, 2, NO_LIMIT),
        bench.batchphone_run(input_path, 2, NO_LIMIT, api="batch"),
        bench.baseline("sdk_loop", input_path, 1),
        bench.baseline("sdk_async", input_path, 2),
        bench.baseline("httpx_raw", input_path, 2),
    ):
        measured, log, _ = bench.api_run(argv, users=10)
        if measured.returncode != 0 or log.users_updated != 10:
            raise SystemExit(f"warm-up failed: {measured.command}\n{measured.stderr[-2000:]}")
    mixed = data.mixed_csv(bench.workdir, 10)
    for argv in (
        bench.python("-m", "bench.baselines.phonenumbers_loop", str(mixed)),
        bench.python("-m", "batchphone", "validate", str(mixed), "--quiet"),
        bench.python("-m", "batchphone", "--help"),
    ):
        measured = measure(argv, cwd=bench.root)
        if measured.returncode not in (0, 1):
            raise SystemExit(f"warm-up failed: {measured.command}\n{measured.stderr[-2000:]}")
