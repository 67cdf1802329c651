"""Every run can be undone, whatever happens to its calls: the fault matrix, in-process.

The emulator applies updates and then loses the answer (500, a dropped connection, an answer
after the client's timeout, an empty 200, ``{}``), or answers 200 without applying them, on
the write endpoints only. After the run (and, in half the cases, a resume without faults),
undo must put every user back exactly as before the run, and no user may ever have been sent
two different phones by the run.
"""

from __future__ import annotations

import errno
import json
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from batchphone.emulator import Emulator, Faults
from batchphone.files.journal import iter_records, journal_path
from batchphone.models import Summary
from tests.emulated import (
    PATCH_BATCH,
    PROJECT,
    UPDATE,
    Spy,
    make_emulator,
    read,
    run_job,
    write_input,
)
from tests.virtual import VirtualClock

pytestmark = pytest.mark.anyio

USERS = 60

#: applied and never confirmed, and confirmed but never applied: the faults of issue 16
LOST = Faults(
    seed=0,
    writes_only=True,
    latency=0.02,
    write_latency=0.05,
    applied_500=0.12,
    lost_answer=0.08,
    timeout=0.06,
    empty_200=0.06,
    empty_object_200=0.06,
    unapplied_200=0.08,
    timeout_delay=3.0,
)


def seeded_users(count: int, seed: int) -> list[dict[str, Any]]:
    """Users with phones and verified flags of every kind (none, verified, unverified)."""
    rng = random.Random(seed)
    users = []
    for i in range(count):
        user: dict[str, Any] = {"loginId": f"user{i}@example.com"}
        kind = rng.randrange(3)
        if kind:
            user["phone"] = f"+1415555{i:04d}"
            user["verifiedPhone"] = kind == 1
        users.append(user)
    return users


def state(emulator: Emulator) -> dict[str, tuple[str, bool]]:
    """Each user's phone and verified flag as the emulator holds them."""
    return {
        u["loginIds"][0]: (u.get("phone") or "", bool(u.get("verifiedPhone")))
        for u in emulator.users(PROJECT)
    }


def project(
    tmp_path: Path,
    count: int,
    seed: int,
    clock: Callable[[], float] = time.monotonic,
    *,
    verified: str | None = None,
) -> tuple[Emulator, dict[str, tuple[str, bool]], Path, Path]:
    """An emulated project of ``count`` seeded users, its state now, an input giving each a
    new phone (with ``verified`` in every row when given) and the result file's path."""
    emulator = make_emulator(seeded_users(count, seed), clock=clock, rate_limit=100_000)
    rows = [(f"user{i}@example.com", f"+1415666{i:04d}") for i in range(count)]
    flags = [verified] * count if verified is not None else None
    source = write_input(tmp_path / "in.csv", rows, flags)
    return emulator, state(emulator), source, tmp_path / "r.csv"


def sent_phones(spy: Spy) -> dict[str, set[str]]:
    """Every phone sent to each login id, by update or patch."""
    sent: dict[str, set[str]] = {}
    for body in spy.bodies.get(UPDATE, []):
        sent.setdefault(body["loginId"], set()).add(body["phone"])
    for body in spy.bodies.get(PATCH_BATCH, []):
        for user in body["users"]:
            sent.setdefault(user["loginId"], set()).add(user["phone"])
    return sent


async def faulted_run(
    tmp_path: Path, virtual_clock: VirtualClock, *, api: str, canary: int, seed: int
) -> tuple[Emulator, Path, Path, dict[str, tuple[str, bool]], Spy, Summary]:
    emulator, before, _, out = project(tmp_path, USERS, seed, virtual_clock.now)
    rows = [(f"user{i}@example.com", f"+1415666{i:04d}") for i in range(USERS)]
    verified = [random.Random(seed + i).choice(["true", "false", ""]) for i in range(USERS)]
    source = write_input(tmp_path / "in.csv", rows, verified)
    emulator.set_faults(replace(LOST, seed=seed))
    spy = Spy(emulator)
    job = {"api": api, "batch_size": 10, "canary": canary}
    summary = await run_job(
        emulator, "run", source, out, transport=spy, job=job, timeout=1.0, max_attempts=2
    )
    return emulator, source, out, before, spy, summary


@pytest.mark.virtual_time
@pytest.mark.parametrize("resume", [False, True], ids=["undo", "resume-undo"])
@pytest.mark.parametrize("canary", [0, 5], ids=["", "canary"])
@pytest.mark.parametrize("api", ["update", "batch"])
@pytest.mark.parametrize("seed", [1, 2])
async def test_every_user_is_back_after_undo_whatever_the_answers(
    tmp_path: Path, virtual_clock: VirtualClock, api: str, canary: int, resume: bool, seed: int
) -> None:
    emulator, source, out, before, spy, first = await faulted_run(
        tmp_path, virtual_clock, api=api, canary=canary, seed=seed
    )
    rows = {int(r["row"]): r for r in read(out)}
    assert sorted(rows) == list(range(1, USERS + 1))
    now = state(emulator)
    changed = {login for login in before if now[login] != before[login]}
    assert changed, "the faults left no user changed: the matrix tests nothing"
    for row in rows.values():
        user = now[row["loginId"]]
        if row["status"] == "updated":  # an updated row's user holds what was sent
            assert user[0] == row["phone"], row
        if row["loginId"] in changed:  # a changed user's row never claims nothing was done
            assert row["status"] in ("updated", "unsettled", "failed"), row
            assert row["phone_before"] is not None or before[row["loginId"]][0] == "", row
    emulator.set_faults(Faults())
    if resume:
        again = await run_job(
            emulator, "run", source, out, transport=spy, job={"api": api, "batch_size": 10}
        )
        assert "unsettled" not in again.counts, again.counts
    for login, phones in sent_phones(spy).items():
        assert len(phones) == 1, (login, phones)  # never two different values
    # a third of the users had no phone: putting that back removes the one the run set
    undone = await run_job(emulator, "undo", out, tmp_path / "undo.csv", allow_remove=True)
    assert undone.exit_code == 0, (first.counts, undone.counts)
    assert state(emulator) == before


@pytest.mark.virtual_time
async def test_a_200_without_the_change_is_failed_and_not_undone(
    tmp_path: Path, virtual_clock: VirtualClock
) -> None:
    emulator, before, source, out = project(tmp_path, 10, 5, virtual_clock.now)
    emulator.set_faults(Faults(writes_only=True, unapplied_200=1.0))
    summary = await run_job(emulator, "run", source, out)
    assert summary.counts == {"failed": 10}
    assert {(r["status"], r["reason"]) for r in read(out)} == {("failed", "ANSWER_MISMATCH")}
    assert state(emulator) == before
    emulator.set_faults(Faults())
    undone = await run_job(emulator, "undo", out, tmp_path / "undo.csv", allow_remove=True)
    assert undone.exit_code == 0 and set(undone.counts) == {"unchanged"}
    assert state(emulator) == before


@pytest.mark.virtual_time
async def test_an_applied_update_whose_answer_is_lost_is_confirmed_by_a_read(
    tmp_path: Path, virtual_clock: VirtualClock
) -> None:
    emulator, before, source, out = project(tmp_path, 10, 6, virtual_clock.now)
    emulator.set_faults(Faults(writes_only=True, applied_500=1.0))
    summary = await run_job(emulator, "run", source, out, max_attempts=2)
    result = read(out)
    assert summary.counts == {"updated": 10} and summary.exit_code == 0
    assert {(r["status"], r["reason"]) for r in result} == {("updated", "CONFIRMED_BY_READ")}
    assert [r["phone_before"] or "" for r in result] == [before[r["loginId"]][0] for r in result]
    # each row's intent went to the journal before its first call, the lost answer after
    # it, and the read that settled it last
    journaled: dict[int, list[str]] = {}
    for record in iter_records(journal_path(out)):
        journaled.setdefault(record["row"], []).append(record["reason"])
    assert set(map(tuple, journaled.values())) == {
        ("IN_FLIGHT", "ANSWER_LOST", "CONFIRMED_BY_READ")
    }
    undone = await run_job(emulator, "undo", out, tmp_path / "undo.csv", allow_remove=True)
    assert undone.counts == {"updated": 10}
    assert state(emulator) == before


class Unverifying(httpx.AsyncBaseTransport):
    """A rule in front of the project: it stores every phone unverified and answers as if it
    had stored what was sent (only a read of the user shows it: the canary's reason to be)."""

    def __init__(self, emulator: Emulator) -> None:
        self.inner = emulator.transport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path != UPDATE:
            return await self.inner.handle_async_request(request)
        body = json.loads(request.content)
        claimed, body["verified"] = body["verified"], False
        headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
        forwarded = httpx.Request(
            request.method,
            request.url,
            headers=headers,
            content=json.dumps(body).encode(),
            extensions=request.extensions,
        )
        answer = await self.inner.handle_async_request(forwarded)
        data = json.loads(await answer.aread())
        if answer.status_code == 200:
            data["user"]["verifiedPhone"] = claimed
        return httpx.Response(answer.status_code, json=data)


@pytest.mark.virtual_time
async def test_the_users_a_failed_canary_changed_are_undone(
    tmp_path: Path, virtual_clock: VirtualClock
) -> None:
    emulator, before, source, out = project(tmp_path, 30, 7, virtual_clock.now, verified="true")
    summary = await run_job(
        emulator, "run", source, out, transport=Unverifying(emulator), job={"canary": 6}
    )
    assert summary.stopped_reason and "canary" in summary.stopped_reason
    result = read(out)
    canary = [r for r in result if r["reason"] == "CANARY_MISMATCH"]
    assert len(canary) == 6 and all(r["verified_before"] is not None for r in canary)
    changed = {login for login, now in state(emulator).items() if now != before[login]}
    assert changed == {r["loginId"] for r in canary}  # their phones changed, flags did not stick
    undone = await run_job(emulator, "undo", out, tmp_path / "undo.csv", allow_remove=True)
    assert undone.exit_code == 0 and undone.counts.get("updated") == 6
    assert state(emulator) == before


class ReadsFailAfterWrites(httpx.AsyncBaseTransport):
    """Updates are applied, then answered 500; once one was sent, every read answers 500."""

    def __init__(self, emulator: Emulator) -> None:
        self.inner = emulator.transport()
        self.written = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == UPDATE:
            self.written = True
            await (await self.inner.handle_async_request(request)).aread()
        elif not self.written:
            return await self.inner.handle_async_request(request)
        return httpx.Response(500, json={"errorCode": "E000500", "errorDescription": "boom"})


@pytest.mark.virtual_time
async def test_a_resume_settles_applied_updates_with_the_journaled_before_image(
    tmp_path: Path, virtual_clock: VirtualClock
) -> None:
    emulator, before, source, out = project(tmp_path, 10, 8, virtual_clock.now, verified="true")
    transport = ReadsFailAfterWrites(emulator)
    first = await run_job(emulator, "run", source, out, transport=transport, max_attempts=2)
    assert first.counts == {"unsettled": 10} and first.exit_code == 1
    assert all(now != before[login] for login, now in state(emulator).items())
    # the rerun reads the users: they hold the new phones, so the rows are updated, with the
    # image journaled before the first call (the users' state now would say "unchanged")
    second = await run_job(emulator, "run", source, out)
    assert second.counts == {"updated": 10} and second.requests == 2  # license, one search
    result = read(out)
    assert {r["reason"] for r in result} == {"CONFIRMED_BY_READ"}
    assert [(r["phone_before"] or "") for r in result] == [before[r["loginId"]][0] for r in result]
    undone = await run_job(emulator, "undo", out, tmp_path / "undo.csv", allow_remove=True)
    assert undone.exit_code == 0 and state(emulator) == before


class Stale(httpx.AsyncBaseTransport):
    """A cache in front of the project: updates are applied, but answered with the user as it
    was before (a 200 that shows no change)."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.inner = emulator.transport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path != UPDATE:
            return await self.inner.handle_async_request(request)
        login_id = json.loads(request.content)["loginId"]
        old = self.emulator.user(PROJECT, login_id)
        answer = await self.inner.handle_async_request(request)
        await answer.aread()
        return httpx.Response(answer.status_code, json={"user": old})


@pytest.mark.virtual_time
async def test_retry_failed_never_replaces_a_known_before_image(
    tmp_path: Path, virtual_clock: VirtualClock
) -> None:
    emulator, before, source, out = project(tmp_path, 10, 9, virtual_clock.now, verified="false")
    first = await run_job(emulator, "run", source, out, transport=Stale(emulator))
    assert first.counts == {"failed": 10}  # ANSWER_MISMATCH, yet every user was changed
    assert all(now != before[login] for login, now in state(emulator).items())
    again = await run_job(emulator, "run", source, out, retry_failed=True)
    result = read(out)
    # the users hold what the rows send: updated with the image read before the first run,
    # never unchanged with the run's own phone as the "before"
    assert again.counts == {"updated": 10}
    assert [(r["phone_before"] or "") for r in result] == [before[r["loginId"]][0] for r in result]
    undone = await run_job(emulator, "undo", out, tmp_path / "undo.csv", allow_remove=True)
    assert undone.exit_code == 0 and state(emulator) == before


async def test_a_full_disk_under_the_journal_sends_no_call_without_its_record(
    tmp_path: Path, small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal's disk fills with calls in flight: nothing is sent unjournaled, the run
    stops (exit 4), and after room is made a resume and an undo put every user back."""
    emulator, before, source, _ = project(tmp_path, 300, 10, verified="true")
    emulator.set_faults(Faults(seed=2, writes_only=True, write_latency=0.01, applied_500=0.2))
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    out = small_disk / "r.csv"
    spy = Spy(emulator)
    first = await run_job(emulator, "run", source, out, transport=spy, concurrency=8)
    assert first.exit_code == 4
    # every row sent has its write-ahead record on the disk (the journal that filled up)
    journaled = {r["loginId"] for r in iter_records(journal_path(out))}
    assert set(sent_phones(spy)) <= journaled
    changed = {login for login, now in state(emulator).items() if now != before[login]}
    assert 0 < len(changed) < 300
    await anyio.run_process(["mount", "-o", "remount,size=4m", str(small_disk)])
    emulator.set_faults(Faults())
    again = await run_job(emulator, "run", source, out, transport=spy)
    assert again.exit_code == 0, again.counts
    for login, phones in sent_phones(spy).items():
        assert len(phones) == 1, (login, phones)
    undone = await run_job(emulator, "undo", out, tmp_path / "undo.csv", allow_remove=True)
    assert undone.exit_code == 0 and state(emulator) == before


async def test_no_call_leaves_once_its_record_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills as a call's start is recorded, right before its intent: the call stays
    home (its record is not on disk), and so does every call after it."""
    emulator, _, source, out = project(tmp_path, 40, 11, verified="true")
    real_write = os.write
    starts = 0

    def write(fd: int, data: bytes) -> int:
        nonlocal starts
        if b'"start"' in data:
            starts += 1
            if starts == 12:  # the license, two searches (users, phones), the ninth update
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr("batchphone.files.journal.os.write", write)
    spy = Spy(emulator)
    summary = await run_job(emulator, "run", source, out, transport=spy, concurrency=1)
    assert summary.exit_code == 4
    records = iter_records(journal_path(out))
    on_disk = {r["loginId"] for r in records if r.get("reason") == "IN_FLIGHT"}
    sent = set(sent_phones(spy))
    assert len(sent) == 8 and sent <= on_disk
