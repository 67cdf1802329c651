"""Baseline ``sdk_loop``: the sync ``descope`` SDK, ``update_phone`` row by row.

What a careful user writes in an afternoon: read the CSV, call ``update_phone`` for each row
with ``fail_on_conflict=True`` (never merge users by accident), and on ``RateLimitException``
sleep the ``Retry-After`` the SDK hands over, then send the same row again. Every row gets a
line in the result CSV; a row the API refuses is recorded, not fatal. Phones are sent as the
cell holds them (the benchmark's inputs are already E.164).

    DESCOPE_PROJECT_ID=... DESCOPE_MANAGEMENT_KEY=... \\
        python -m bench.baselines.sdk_loop in.csv --out out.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections import Counter

from descope import AuthException, DescopeClient, RateLimitException
from descope.exceptions import API_RATE_LIMIT_RETRY_AFTER_HEADER

__all__ = ["main", "retry_after_s", "update_one"]

#: When the SDK could not read a Retry-After (it then reports 0), wait this long instead.
FALLBACK_RETRY_AFTER_S = 1.0


def retry_after_s(exc: RateLimitException) -> float:
    """The seconds the API asked us to wait (the SDK parses ``Retry-After`` into an int)."""
    value = exc.rate_limit_parameters.get(API_RATE_LIMIT_RETRY_AFTER_HEADER, 0)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = 0.0
    return seconds if seconds > 0 else FALLBACK_RETRY_AFTER_S


def update_one(client: DescopeClient, login_id: str, phone: str) -> tuple[str, str, int]:
    """Update one user's phone: (status, detail, rate-limited answers received)."""
    limited = 0
    while True:
        try:
            client.mgmt.user.update_phone(login_id, phone, fail_on_conflict=True)
        except RateLimitException as exc:
            limited += 1
            time.sleep(retry_after_s(exc))
            continue
        except AuthException as exc:
            return "failed", f"HTTP {exc.status_code}", limited
        return "updated", "", limited


def main(argv: list[str] | None = None) -> int:
    """Update every row of INPUT; write one result line per row to --out; 0 if all updated."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    client = DescopeClient(
        project_id=os.environ["DESCOPE_PROJECT_ID"],
        management_key=os.environ["DESCOPE_MANAGEMENT_KEY"],
    )
    counts: Counter[str] = Counter()
    with (
        open(args.input, newline="", encoding="utf-8") as source,
        open(args.out, "w", newline="", encoding="utf-8") as sink,
    ):
        writer = csv.writer(sink)
        writer.writerow(["loginId", "phone", "status", "detail"])
        for row in csv.DictReader(source):
            status, detail, limited = update_one(client, row["loginId"], row["phone"])
            counts[status] += 1
            counts["rate_limited"] += limited
            writer.writerow([row["loginId"], row["phone"], status, detail])
    print(json.dumps(dict(counts)))
    return 0 if counts["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
