"""A process sharing a project's budget, for tests/test_budget.py.

``python -m tests.budget_worker MODE ...``.

``run STORE CALLS PERIOD SECONDS LATENCY OUT``: 4 workers call through a limiter on the shared
budget for SECONDS, each call holding its slot LATENCY s; one line per call goes to OUT:
``taken given_back`` (wall clock, as the file store's). ``hold STORE CALLS PERIOD``: take
CALLS slots, say ``held``, and wait to be killed.
"""

from __future__ import annotations

import sys
import time

import anyio

from batchphone.remote.budget import open_budget
from batchphone.remote.ratelimit import RateLimiter

PROJECT = "Pshared"


async def run(
    store: str, calls: int, period: float, seconds: float, latency: float, out: str
) -> None:
    limiter = RateLimiter(
        calls, period, margin=0.0, shared=open_budget(store, PROJECT, period=period)
    )
    lines: list[str] = []
    end = time.time() + seconds

    async def worker() -> None:
        while time.time() < end:
            async with limiter.slot():
                taken = time.time()
                await anyio.sleep(latency)
                back = time.time()  # the slot is given back right after this
            lines.append(f"{taken} {back}\n")

    async with anyio.create_task_group() as group:
        for _ in range(4):
            group.start_soon(worker)
    limiter.close()
    await anyio.Path(out).write_text("".join(lines), encoding="utf-8")


async def hold(store: str, calls: int, period: float) -> None:
    limiter = RateLimiter(
        calls, period, margin=0.0, shared=open_budget(store, PROJECT, period=period)
    )
    for _ in range(calls):
        await limiter.acquire()
    print("held", flush=True)
    await anyio.sleep(3600)


def main(argv: list[str]) -> None:
    """``MODE STORE ...`` as the module's docstring says."""
    mode, store, *rest = argv
    if mode == "run":
        anyio.run(run, store, int(rest[0]), float(rest[1]), float(rest[2]), float(rest[3]), rest[4])
    else:
        anyio.run(hold, store, int(rest[0]), float(rest[1]))


if __name__ == "__main__":
    main(sys.argv[1:])
