"""Baseline ``httpx_raw``: a bare ``httpx.AsyncClient`` loop, the floor of the HTTP stack's cost.

No SDK, no normalization, no journal, no result file: ``--concurrency`` asyncio workers take
rows from one iterator and POST the same body batchphone sends (``loginId``, ``phone``,
``verified: null``, ``failOnConflict: true``) with the same headers over one keep-alive pool,
and count the answers. A 429 makes the worker sleep its ``Retry-After`` and resend (the CPU
scenario has no budget, so it should never happen). What batchphone costs above this is its
pipeline, journal, result file and progress.

``--clients per-worker`` gives each worker its own ``AsyncClient`` of one connection instead:
httpcore 1.0's pool walks all its connections (and its walk is quadratic in them) twice per
request, so one shared pool of N connections costs more CPU per request as N grows; N pools of
one connection do not. The bench reports both, to show how much of the cost is that walk.

    DESCOPE_PROJECT_ID=... DESCOPE_MANAGEMENT_KEY=... DESCOPE_BASE_URI=http://127.0.0.1:8765 \\
        python -m bench.baselines.httpx_raw in.csv --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import ssl
import sys
from collections import Counter
from collections.abc import Iterator

import httpx

__all__ = ["main", "post_all"]

UPDATE_PATH = "/v1/mgmt/user/update/phone"


async def _worker(
    client: httpx.AsyncClient, rows: Iterator[dict[str, str]], counts: Counter[int]
) -> None:
    # one shared iterator: the event loop runs one worker at a time, so no lock is needed
    for row in rows:
        body = {
            "loginId": row["loginId"],
            "phone": row["phone"],
            "verified": None,
            "failOnConflict": True,
        }
        while True:
            response = await client.post(UPDATE_PATH, json=body)
            counts[response.status_code] += 1
            if response.status_code != 429:
                break
            await asyncio.sleep(float(response.headers.get("Retry-After") or 1))


async def post_all(
    base_url: str,
    project_id: str,
    key: str,
    rows: Iterator[dict[str, str]],
    concurrency: int,
    *,
    per_worker: bool = False,
) -> Counter[int]:
    """POST every row with ``concurrency`` workers; answers counted by HTTP status.

    ``per_worker``: one client of one connection per worker instead of one shared pool.
    """
    counts: Counter[int] = Counter()
    headers = {
        "Authorization": f"Bearer {project_id}:{key}",
        "x-descope-project-id": project_id,
    }
    pool_size = 1 if per_worker else concurrency
    limits = httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size)
    # one TLS context for all clients: httpx builds a new one (about 20 ms) per client otherwise
    tls = ssl.create_default_context()
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, verify=tls)
            )
            for _ in range(concurrency if per_worker else 1)
        ]
        async with asyncio.TaskGroup() as group:
            for worker in range(concurrency):
                group.create_task(_worker(clients[worker % len(clients)], rows, counts))
    return counts


def main(argv: list[str] | None = None) -> int:
    """POST every row of INPUT; print the answers by status; 0 if every answer was a 200."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--clients", choices=["shared", "per-worker"], default="shared")
    args = parser.parse_args(argv)
    with open(args.input, newline="", encoding="utf-8") as source:
        counts = asyncio.run(
            post_all(
                os.environ["DESCOPE_BASE_URI"],
                os.environ["DESCOPE_PROJECT_ID"],
                os.environ["DESCOPE_MANAGEMENT_KEY"],
                iter(csv.DictReader(source)),
                args.concurrency,
                per_worker=args.clients == "per-worker",
            )
        )
    print(json.dumps({str(status): n for status, n in sorted(counts.items())}))
    return 0 if set(counts) <= {200, 429} else 1


if __name__ == "__main__":
    sys.exit(main())
