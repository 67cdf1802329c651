"""Baseline ``sdk_async``: ``DescopeClientAsync`` with an asyncio semaphore.

The async version a careful user writes: one ``DescopeClientAsync``, one task per row, an
``asyncio.Semaphore(concurrency)`` so that no more than ``--concurrency`` calls are in flight,
``fail_on_conflict=True``, and the same 429 handling as ``sdk_loop``: the task that got the
``RateLimitException`` sleeps its ``Retry-After`` (holding its slot) and sends the row again.
The result CSV is written in input order once every task is done.

    DESCOPE_PROJECT_ID=... DESCOPE_MANAGEMENT_KEY=... \\
        python -m bench.baselines.sdk_async in.csv --out out.csv --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import sys
from collections import Counter

from descope import AuthException, RateLimitException
from descope.descope_client_async import DescopeClientAsync

from bench.baselines.sdk_loop import retry_after_s

__all__ = ["main", "update_all"]


async def _update_one(
    client: DescopeClientAsync, gate: asyncio.Semaphore, login_id: str, phone: str
) -> tuple[str, str, int]:
    limited = 0
    async with gate:
        while True:
            try:
                await client.mgmt.user.update_phone(login_id, phone, fail_on_conflict=True)
            except RateLimitException as exc:
                limited += 1
                await asyncio.sleep(retry_after_s(exc))
                continue
            except AuthException as exc:
                return "failed", f"HTTP {exc.status_code}", limited
            return "updated", "", limited


async def update_all(rows: list[dict[str, str]], concurrency: int) -> list[tuple[str, str, int]]:
    """Update every row, at most ``concurrency`` at once: (status, detail, 429s) per row."""
    gate = asyncio.Semaphore(concurrency)
    async with DescopeClientAsync(
        project_id=os.environ["DESCOPE_PROJECT_ID"],
        management_key=os.environ["DESCOPE_MANAGEMENT_KEY"],
    ) as client:
        return await asyncio.gather(
            *(_update_one(client, gate, row["loginId"], row["phone"]) for row in rows)
        )


def main(argv: list[str] | None = None) -> int:
    """Update every row of INPUT; write one result line per row to --out; 0 if all updated."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input")
    parser.add_argument("--out", required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    with open(args.input, newline="", encoding="utf-8") as source:
        rows = list(csv.DictReader(source))
    results = asyncio.run(update_all(rows, args.concurrency))
    counts: Counter[str] = Counter()
    with open(args.out, "w", newline="", encoding="utf-8") as sink:
        writer = csv.writer(sink)
        writer.writerow(["loginId", "phone", "status", "detail"])
        for row, (status, detail, limited) in zip(rows, results, strict=True):
            counts[status] += 1
            counts["rate_limited"] += limited
            writer.writerow([row["loginId"], row["phone"], status, detail])
    print(json.dumps(dict(counts)))
    return 0 if counts["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
