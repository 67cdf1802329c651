"""10. What reading before writing costs (issue 9): calls per 1,000 all-changed rows.

Every ``run`` reads the users first (100 login ids per search) and checks the new phones (up to
1000 per search), unless ``--no-lookup``. On a file where every row changes the reads save
nothing, so this is their worst case: the reads must stay at most 1.5% of the calls. Both runs
face a fresh emulator without a rate limit (the count of calls, not their pace, is measured);
the license handshake counts as a call in both.
"""

from __future__ import annotations

from collections.abc import Mapping

from bench import data
from bench.context import NO_LIMIT, Bench
from bench.report import Row

__all__ = ["ROWS", "SEARCH_PATH", "TARGET_SHARE", "calls_per_1000", "lookup_cost", "read_share"]

SEARCH_PATH = "/v2/mgmt/user/search"
#: Issue 9: on an all-changed file the reads are at most this share of the calls.
TARGET_SHARE = 0.015
ROWS = 1000
_CONCURRENCY = 8


def calls_per_1000(paths: Mapping[str, int], rows: int) -> float:
    """Calls of every kind the server saw, per 1,000 input rows."""
    return sum(paths.values()) * 1000 / rows


def read_share(paths: Mapping[str, int]) -> float:
    """The searches' share of all the calls the server saw (0.0 when it saw none)."""
    total = sum(paths.values())
    return paths.get(SEARCH_PATH, 0) / total if total else 0.0


def lookup_cost(bench: Bench) -> None:
    """10. Calls per 1,000 all-changed rows, lookups on (the default) against ``--no-lookup``."""
    scenario = "10 lookups, all rows changed"
    input_path = data.update_csv(bench.workdir, ROWS)
    seen: dict[str, Mapping[str, int]] = {}
    for tool, extra in (("batchphone", []), ("batchphone --no-lookup", ["--no-lookup"])):
        argv = bench.batchphone_run(input_path, _CONCURRENCY, NO_LIMIT) + extra
        measured, log, _ = bench.api_run(argv, users=ROWS)
        seen[tool] = log.paths
        by_path = ", ".join(f"{n} {path}" for path, n in sorted(log.paths.items()))
        bench.add(
            Row(
                scenario,
                tool,
                "calls per 1,000 rows",
                calls_per_1000(log.paths, ROWS),
                unit="calls",
                note=f"{by_path}; {len(log.updates_ok)} updated; exit {measured.returncode}",
            )
        )
    share = read_share(seen["batchphone"])
    bench.add(
        Row(
            scenario,
            "batchphone",
            "reads / all calls",
            share,
            bound=TARGET_SHARE,
            bound_label="target",
            target=f"<= {TARGET_SHARE:.1%}",
            met=share <= TARGET_SHARE and len(seen["batchphone"]) > 0,
        )
    )
