"""Profile evidence for a missed target: the command rerun under py-spy, summarized in text.

py-spy samples every thread of the child (batchphone normalizes in worker threads, which
cProfile would not see) and, with ``--gil``, keeps only the samples that held the GIL: where a
Python process's CPU goes. The summary gives the share of samples by package (the frame's own
time) and the functions with the largest inclusive share, ready for ``results.md``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Profile", "package_of", "py_spy", "record", "summarize"]

_RATE_HZ = 250


@dataclass(frozen=True, slots=True)
class Profile:
    """A sampled profile: shares of samples by package and function (self), and inclusive."""

    samples: int
    by_package: tuple[tuple[str, float], ...]
    by_function: tuple[tuple[str, float], ...]
    inclusive: tuple[tuple[str, float], ...]

    def lines(self, *, packages: int = 7, functions: int = 8) -> list[str]:
        """Markdown bullet lines: the largest packages, functions (self), call paths."""
        if not self.samples:
            return ["no samples"]

        def shares(items: tuple[tuple[str, float], ...], count: int) -> str:
            return ", ".join(f"{name} {share:.0%}" for name, share in items[:count])

        return [
            f"{self.samples} samples; self time by package: {shares(self.by_package, packages)}",
            f"self time by function: {shares(self.by_function, functions)}",
            f"inclusive (callers below the entry points): {shares(self.inclusive, functions)}",
        ]


def py_spy() -> str | None:
    """The py-spy executable beside this interpreter or on PATH (``None`` if absent)."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def package_of(filename: str) -> str:
    """``.../site-packages/httpcore/_async/x.py`` -> ``httpcore``; stdlib -> ``stdlib``."""
    path = filename.replace("\\", "/")
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    for package in ("batchphone", "bench"):
        if f"/{package}/" in path:
            return package
    if path.startswith("<"):
        return "generated code"  # dataclass __init__ and the like, compiled from strings
    return "stdlib"


def _frame(frame: str) -> tuple[str, str]:
    """``"func (path/to/file.py:12)"`` -> (``func (file.py)``, package)."""
    name, _, where = frame.partition(" (")
    filename = where.rsplit(":", 1)[0].rstrip(")")
    return f"`{name}` ({Path(filename).name})", package_of(filename)


#: Frames that hold the whole program (entry points, the CLI, event loops, thread starts): an
#: inclusive share of ~100% for them says nothing about where the time goes.
_PLUMBING = frozenset({"stdlib", "click", "generated code"})
_MAX_INCLUSIVE = 0.9


def summarize(raw: str) -> Profile:
    """Summarize py-spy's ``raw`` output (one ``frame;frame;... count`` line per stack)."""
    total = 0
    own_package: Counter[str] = Counter()
    own_function: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";") if " (" in f]
        if not frames:
            continue
        own_function[frames[-1][0]] += n
        own_package[frames[-1][1]] += n
        for name in {name for name, package in frames if package not in _PLUMBING}:
            inclusive[name] += n
    if not total:
        return Profile(0, (), (), ())
    paths = [(k, v / total) for k, v in inclusive.most_common() if v / total < _MAX_INCLUSIVE]
    return Profile(
        samples=total,
        by_package=tuple((k, v / total) for k, v in own_package.most_common(12)),
        by_function=tuple((k, v / total) for k, v in own_function.most_common(12)),
        inclusive=tuple(paths[:12]),
    )


def record(
    argv: list[str], *, env: dict[str, str] | None, cwd: Path, out: Path, timeout_s: float = 600.0
) -> Profile | str:
    """Run ``argv`` under ``py-spy record --gil``: its summary, or why there is none."""
    executable = py_spy()
    if executable is None:
        return "py-spy is not installed (pip install -e '.[bench]')"
    command = [executable, "record", "--gil", "--full-filenames", "--function"]
    command += ["--rate", str(_RATE_HZ), "--format", "raw", "--output", str(out), "--", *argv]
    try:
        done = subprocess.run(
            command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return f"py-spy did not finish in {timeout_s:.0f} s"
    if not out.exists():
        # py-spy needs ptrace; containers without CAP_SYS_PTRACE refuse it
        return f"py-spy failed: {done.stderr.strip()[-300:]}"
    return summarize(out.read_text(encoding="utf-8", errors="replace"))
