"""Helpers for the end-to-end tests of plan, read-before-write, undo, batch mode and canary.

Every run goes to an in-process emulator (``Emulator(...).transport()``): no socket, no port.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import polars as pl

from batchphone.config import Endpoint, Secret, Settings
from batchphone.emulator import Emulator, ProjectSettings
from batchphone.models import Summary
from batchphone.modes.command import CommandPlan, decide
from batchphone.modes.job import Job
from batchphone.modes.runner import execute
from batchphone.progress import Progress

PROJECT = "P2batchphoneIssue6Project000000"
KEY = "K2-issue6-management-key-0123456789"
UPDATE = "/v1/mgmt/user/update/phone"
SEARCH = "/v2/mgmt/user/search"
LOAD = "/v1/mgmt/user"
PATCH_BATCH = "/v1/mgmt/user/patch/batch"
LICENSE = "/v1/mgmt/license"

Handler = Callable[[httpx.Request], Awaitable[httpx.Response | None]]


def journal_results(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The row records of ``out``'s journal: (write-ahead intents, every other record)."""
    from batchphone.files.journal import iter_records, journal_path

    records = list(iter_records(journal_path(out)))
    intents = [r for r in records if r.get("reason") == "IN_FLIGHT"]
    return intents, [r for r in records if r.get("reason") != "IN_FLIGHT"]


class CallTimes:
    """A ``calls.CallLog`` that keeps the times: each call's start, then its answer."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.answers: list[float] = []

    def started(self, ts: float) -> object:
        self.starts.append(ts)
        return len(self.starts)

    def answered(self, ts: float, token: object) -> None:
        assert token == len(self.starts), "an answer is recorded right after its own start"
        self.answers.append(ts)


def new_phones(count: int) -> list[tuple[str, str]]:
    """(login id, new phone) for ``user0..`` of ``phone_users``: phones none of them has yet."""
    return [(f"user{i}@example.com", f"+1415666{i:04d}") for i in range(count)]


def make_emulator(
    users: list[dict[str, Any]], clock: Callable[[], float] = time.monotonic, **project: Any
) -> Emulator:
    """One project holding ``users``; on a virtual-time loop, pass ``clock=virtual_clock.now``."""
    return Emulator(
        projects=[ProjectSettings(project_id=PROJECT, management_key=KEY, users=users, **project)],
        clock=clock,
    )


def endpoint(key: str = KEY) -> Endpoint:
    """The emulated project as a run calls it (its base URL never reached: pass a transport)."""
    return Endpoint(PROJECT, "http://x.invalid", Secret(key))


def settings(**overrides: Any) -> Settings:
    """Settings for the emulated project: a budget never reached, short retry waits.

    No shared budget store: every run in the suite would otherwise rewrite a JSON file twice
    per call (half the CPU of these tests). Runs that test the store pass
    ``budget_store="file"`` (test_runner.py: the scaled limit and the shared-budget tests).
    """
    base = Settings(
        project_id=PROJECT,
        base_url="http://127.0.0.1:9",  # never reached: the transport is in-process
        management_key=Secret(KEY),
        rate_calls=10_000,
        rate_period=1.0,
        retry_wait_initial=0.001,
        retry_wait_max=0.005,
        budget_store="none",
    )
    return replace(base, **overrides)


async def run_job(
    emulator: Emulator | None,
    command: str,
    input_path: Path,
    out: Path,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    job: dict[str, Any] | None = None,
    local: bool | None = None,
    progress: Progress | None = None,
    handle_signals: bool = False,
    **overrides: Any,
) -> Summary:
    """Execute ``command`` with the job options ``job`` and settings ``overrides``: the one
    place the tests of whole commands on an in-process emulator (faults, spies, a virtual clock,
    both anyio backends) drive ``runner.execute`` rather than the synchronous public API.

    ``local=False``: a ``validate`` or dry run through the pool, as a run goes (the report
    path's oracle, tests/test_report.py).
    """
    plan = plan_of(
        Job(command=command, input_path=input_path, out_path=out, **(job or {})),
        settings(**overrides),
    )
    if local is not None:
        plan = replace(plan, local=local)
    if transport is None:
        assert emulator is not None, "an emulator or a transport to it"
        transport = emulator.transport()
    return await execute(
        plan,
        transport=transport,
        progress=progress,
        handle_signals=handle_signals,
    )


def plan_of(job: Job, the_settings: Settings, target: Endpoint | None = None) -> CommandPlan:
    """The plan of ``job`` against ``target``, by default the project ``the_settings`` name
    (``settings()``: the emulated one; its base URL never reached: pass a transport)."""
    if target is None and the_settings.project_id and the_settings.management_key:
        base_url = the_settings.base_url or "http://127.0.0.1:9"
        target = Endpoint(the_settings.project_id, base_url, the_settings.management_key)
    return decide(job, the_settings, target)


class Spy(httpx.AsyncBaseTransport):
    """Passes every request to the emulator, after ``handler`` had a chance to answer it.

    It keeps the JSON body (or query) of each request by path.
    """

    def __init__(self, emulator: Emulator, handler: Handler | None = None) -> None:
        self.inner = emulator.transport()
        self.handler = handler
        self.bodies: dict[str, list[Any]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else dict(request.url.params)
        self.bodies.setdefault(request.url.path, []).append(body)
        if self.handler is not None:
            answer = await self.handler(request)
            if answer is not None:
                return answer
        return await self.inner.handle_async_request(request)


def read(path: Path) -> list[dict[str, Any]]:
    """A CSV result file as dicts of text cells."""
    return pl.read_csv(path, infer_schema=False).to_dicts()


def by_row(path: Path) -> dict[int, tuple[str, str | None]]:
    """(status, reason) of each row of a CSV result file."""
    return {int(r["row"]): (r["status"], r["reason"]) for r in read(path)}


def calls(emulator: Emulator, path: str | None = None) -> int:
    """Calls the emulator received (to ``path``, or to any path)."""
    requests = emulator.stats(PROJECT).requests
    return sum(n for (p, _), n in requests.items() if path in (None, p))


def write_input(path: Path, rows: list[tuple[str, str]], verified: list[str] | None = None) -> Path:
    """An input CSV of (loginId, phone) rows, with a verified column when given."""
    data: dict[str, list[str]] = {
        "loginId": [login for login, _ in rows],
        "phone": [phone for _, phone in rows],
    }
    if verified is not None:
        data["verified"] = verified
    pl.DataFrame(data).write_csv(path)
    return path


def phone_users(count: int, *, verified: bool = True) -> list[dict[str, Any]]:
    """``count`` users ``user<i>@example.com`` with phone ``+1415555<i:04d>``."""
    return [
        {
            "loginId": f"user{i}@example.com",
            "phone": f"+1415555{i:04d}",
            "verifiedPhone": verified,
        }
        for i in range(count)
    ]


def json_answer(status: int, body: dict[str, Any]) -> httpx.Response:
    """An API answer with a JSON body."""
    return httpx.Response(status, json=body)
