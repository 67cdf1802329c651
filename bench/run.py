"""The one bench command: every scenario, baselines included, then results.md and results.png.

    python -m bench.run            # full run (about 16 min on 2 cores), writes bench/results.*
    python -m bench.run --quick    # smaller sizes (about 6 min), same figures
    python -m bench.run --only budget,cpu --out /tmp/bench   # a subset, elsewhere

Inputs are generated once into ``--workdir`` and reused by later runs. The emulator's fake
management key is drawn at random for each run and travels only by environment variables.
Children compile their bytecode into ``--workdir``/pycache (``PYTHONPYCACHEPREFIX``), once, in
a warm-up round that also checks every tool works before the long measurements: users run
with compiled modules, and ``PYTHONDONTWRITEBYTECODE`` would otherwise make every start-up
compile batchphone from source.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

from bench.context import FULL, QUICK, Bench, warm_up
from bench.report import machine, write_markdown, write_plot
from bench.scenarios import SCENARIOS

__all__ = ["main"]

_HERE = Path(__file__).resolve().parent


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about 6 minutes)")
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated scenarios (default all: {','.join(SCENARIOS)})",
    )
    parser.add_argument(
        "--out", type=Path, default=_HERE, help="where results.md and results.png go (bench/)"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "batchphone-bench",
        help="generated inputs and result files (reused between runs)",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only.split(",")) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios and write the results; 0 when every target is met."""
    args = _parse(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(args.workdir / "pycache")
    load_before = os.getloadavg()[0]
    bench = Bench(
        plan=QUICK if args.quick else FULL,
        workdir=args.workdir,
        key=secrets.token_urlsafe(24),
        root=_HERE.parent,
    )
    print("== warm-up", flush=True)
    warm_up(bench)
    started = time.monotonic()
    for name in args.only.split(","):
        print(f"== {name}", flush=True)
        scenario_started = time.monotonic()
        SCENARIOS[name](bench)
        print(f"   ({time.monotonic() - scenario_started:.0f} s)", flush=True)
    elapsed = time.monotonic() - started
    mode = "quick" if args.quick else "full"
    command = "python -m bench.run" + (" --quick" if args.quick else "")
    if args.only != ",".join(SCENARIOS):
        command += f" --only {args.only}"
    described = machine(bench.root)
    # other work on the machine skews every figure: say how busy it was
    described["load average"] = f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    write_markdown(
        args.out / "results.md",
        bench.rows,
        described=described,
        mode=mode,
        command=command,
        elapsed_s=elapsed,
        notes=bench.notes,
        profiles=bench.profiles,
    )
    title = (
        f"batchphone {described['batchphone']} benchmarks ({mode}), {described['date']}: "
        f"{described['cores']} cores, {described['cpu']}, {described['python']}"
    )
    write_plot(args.out / "results.png", bench.rows, title=title)
    missed = [row for row in bench.rows if row.met is False]
    print(f"done in {elapsed:.0f} s: {args.out / 'results.md'}, {args.out / 'results.png'}")
    for row in missed:
        print(f"target missed: {row.scenario} {row.tool} {row.figure} = {row.value}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
