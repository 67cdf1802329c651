"""Injected faults, in-process: each kind, latency, seeded replay, and their validation."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import anyio
import httpx
import pytest

from batchphone.emulator import ConnectionDropped, Emulator, FaultKind, Faults, ProjectSettings
from batchphone.emulator.faults import FaultPicker

pytestmark = pytest.mark.anyio

PID, KEY = "P1", "K1"
UPDATE = "/v1/mgmt/user/update/phone"
USERS = [{"loginId": f"u{i}@example.com"} for i in range(200)]


def make(faults: Faults, **budget: Any) -> Emulator:
    return Emulator([ProjectSettings(PID, KEY, users=USERS, **budget)], faults=faults)


def client(emu: Emulator, timeout: float | None = 5.0) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {PID}:{KEY}"}
    return httpx.AsyncClient(
        transport=emu.transport(), base_url="http://e", headers=headers, timeout=timeout
    )


def body(i: int = 0, phone: str = "+14155550100") -> dict[str, Any]:
    return {
        "loginId": f"u{i}@example.com",
        "phone": phone,
        "verified": True,
        "failOnConflict": True,
    }


@pytest.mark.parametrize(
    ("faults", "status"),
    [
        (Faults(error_500=1.0), 500),
        (Faults(error_503=1.0), 503),
        (Faults(error_520=1.0), 520),
        (Faults(error_524=1.0), 524),
    ],
)
async def test_server_errors_answer_json_and_apply_nothing(faults: Faults, status: int) -> None:
    emu = make(faults)
    async with client(emu) as c:
        response = await c.post(UPDATE, json=body())
    assert response.status_code == status
    assert response.json()["errorCode"] == f"E000{status}"
    assert emu.user(PID, "u0@example.com")["phone"] == ""  # type: ignore[index]
    assert emu.stats(PID).log[0].fault == f"error_{status}"


async def test_html_502_is_not_json() -> None:
    async with client(make(Faults(html_502=1.0))) as c:
        response = await c.post(UPDATE, json=body())
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/html")
    with pytest.raises(ValueError):
        response.json()


async def test_drop_closes_the_connection_before_applying() -> None:
    emu = make(Faults(drop=1.0))
    async with client(emu) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            await c.post(UPDATE, json=body())
    assert emu.user(PID, "u0@example.com")["phone"] == ""  # type: ignore[index]
    stats = emu.stats(PID)
    assert stats.requests == {(UPDATE, 0): 1} and stats.updates == {}


async def test_lost_answer_applies_then_closes_the_connection() -> None:
    emu = make(Faults(lost_answer=1.0))
    async with client(emu) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            await c.post(UPDATE, json=body())
    assert emu.user(PID, "u0@example.com")["phone"] == "+14155550100"  # type: ignore[index]
    stats = emu.stats(PID)
    assert stats.requests == {(UPDATE, 0): 1} and stats.updates == {"u0@example.com": 1}


async def test_timeout_applies_and_answers_after_the_clients_read_timeout() -> None:
    emu = make(Faults(timeout=1.0, timeout_delay=30.0))
    started = time.monotonic()
    async with client(emu, timeout=0.2) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.post(UPDATE, json=body())
    assert 0.15 < time.monotonic() - started < 5.0  # the client's timeout, not the 30 s delay
    assert emu.user(PID, "u0@example.com")["phone"] == "+14155550100"  # type: ignore[index]
    assert emu.stats(PID).log[0].fault == "timeout"


async def test_a_timeout_shorter_than_the_client_timeout_is_just_slow() -> None:
    emu = make(Faults(timeout=1.0, timeout_delay=0.05))
    async with client(emu, timeout=None) as c:
        response = await c.post(UPDATE, json=body())
    assert response.status_code == 200


async def test_ignore_update_answers_200_but_changes_nothing() -> None:
    emu = make(Faults(ignore_update=1.0))
    async with client(emu) as c:
        response = await c.post(UPDATE, json=body())
        rename = {"loginId": "u1@example.com", "displayName": "X"}
        patched = await c.patch("/v1/mgmt/user/patch", json=rename)
        loaded = await c.get("/v1/mgmt/user", params={"loginId": "u0@example.com"})
    assert response.status_code == 200
    assert response.json()["user"]["phone"] == "+14155550100"
    assert patched.json()["user"]["name"] == "X"
    assert emu.user(PID, "u0@example.com")["phone"] == ""  # type: ignore[index]
    assert emu.user(PID, "u1@example.com")["name"] == ""  # type: ignore[index]
    assert loaded.json()["user"]["phone"] == ""
    assert emu.stats(PID).updates == {}
    assert [e.fault for e in emu.stats(PID).log] == ["ignore_update", "ignore_update", None]


async def test_latency_and_jitter_delay_every_call() -> None:
    emu = make(Faults(latency=0.05, jitter=0.05))
    async with client(emu) as c:
        started = time.monotonic()
        await c.get("/v1/mgmt/license")
        await c.get("/v1/mgmt/user", params={"loginId": "u0@example.com"})
        elapsed = time.monotonic() - started
    assert 0.1 <= elapsed < 2.0


async def test_faults_spare_the_license_and_never_replace_a_429() -> None:
    emu = make(Faults(error_500=1.0), rate_limit=1)
    emu.block(PID, 30.0)
    async with client(emu) as c:
        assert (await c.get("/v1/mgmt/license")).status_code == 200
        assert (await c.post(UPDATE, json=body())).status_code == 429


async def test_rates_are_close_to_what_was_asked() -> None:
    emu = make(Faults(seed=3, error_503=0.3, drop=0.1))
    async with client(emu) as c:
        for i in range(200):
            with contextlib.suppress(httpx.RemoteProtocolError):
                await c.get("/v1/mgmt/user", params={"loginId": f"u{i}@example.com"})
    stats = emu.stats(PID)
    assert 40 <= stats.status_count(503) <= 80
    assert 8 <= stats.status_count(0) <= 35
    assert stats.status_count(200) == 200 - stats.status_count(503) - stats.status_count(0)


async def fault_trace(faults: Faults, order: list[int]) -> dict[tuple[int, int], str | None]:
    """Send each update of ``order`` (twice each) and map (row, attempt) to its fault."""
    emu = make(faults)
    trace: dict[tuple[int, int], str | None] = {}

    async def send(i: int) -> None:
        with contextlib.suppress(httpx.TransportError):
            await c.post(UPDATE, json=body(i, f"+1415555{i:04d}"))

    async with client(emu) as c:
        for _attempt in range(2):  # all rows once, concurrently, then all rows again
            async with anyio.create_task_group() as group:
                for i in order:
                    group.start_soon(send, i)
    seen: dict[int, int] = {}
    for entry in emu.stats(PID).log:
        row = int(entry.login_id.removeprefix("u").split("@")[0])  # type: ignore[union-attr]
        trace[(row, seen.get(row, 0))] = entry.fault
        seen[row] = seen.get(row, 0) + 1
    return trace


async def test_the_same_seed_replays_the_same_faults_whatever_the_order() -> None:
    faults = Faults(seed=11, error_500=0.2, drop=0.2, lost_answer=0.1, jitter=0.001)
    forward = await fault_trace(faults, list(range(40)))
    backward = await fault_trace(faults, list(reversed(range(40))))
    assert forward == backward
    assert len(set(forward.values())) >= 3  # not all the same: the draw varies
    reseeded = Faults(seed=12, error_500=0.2, drop=0.2, lost_answer=0.1)
    other = await fault_trace(reseeded, list(range(40)))
    assert other != forward


def test_set_faults_changes_them_at_run_time() -> None:
    emu = make(Faults())
    assert emu.faults == Faults()
    emu.set_faults(Faults(error_503=0.5))
    assert emu.faults.error_503 == 0.5


@pytest.mark.parametrize(
    "kwargs",
    [{"error_500": 1.5}, {"drop": -0.1}, {"drop": 0.6, "timeout": 0.6}, {"latency": -1.0}],
)
def test_bad_faults_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Faults(**kwargs)  # type: ignore[arg-type]


def test_no_fault_and_no_latency_skips_the_draw() -> None:
    picker = FaultPicker(Faults(seed=5))
    assert not picker.active
    assert picker.pick(b"x", faulty=True).kind is None
    sure = FaultPicker(Faults(timeout=1.0))
    assert sure.pick(b"x", faulty=True).kind is FaultKind.TIMEOUT
    assert sure.pick(b"x", faulty=False).kind is None


async def test_without_a_way_to_drop_the_app_raises_connection_dropped() -> None:
    emu = make(Faults(drop=1.0))
    plain = httpx.ASGITransport(app=emu.app)  # no abort hook: neither uvicorn nor ours
    headers = {"Authorization": f"Bearer {PID}:{KEY}"}
    async with httpx.AsyncClient(transport=plain, base_url="http://e", headers=headers) as c:
        with pytest.raises(ConnectionDropped):
            await c.post(UPDATE, json=body())


def test_arrival_jitter_draws_a_delay_per_call_and_leaves_the_other_draws_alone() -> None:
    base = Faults(seed=4, error_503=0.3, latency=0.01, jitter=0.02)
    plain, jittered = (
        FaultPicker(base),
        FaultPicker(Faults(**{**_fields(base), "arrival_jitter": 0.08})),
    )
    delays = []
    for i in range(200):
        key = f"call {i}".encode()
        a, b = plain.pick(key, faulty=True), jittered.pick(key, faulty=True)
        assert a.kind == b.kind and a.arrival_delay == 0.0
        assert 0.0 <= b.arrival_delay < 0.08
        assert b.latency == pytest.approx(a.latency + b.arrival_delay)
        delays.append(b.arrival_delay)
    assert max(delays) - min(delays) > 0.06  # spread over the range, not a constant
    assert FaultPicker(Faults(arrival_jitter=0.08)).active


@pytest.mark.virtual_time
async def test_arrival_jitter_delays_the_count_not_only_the_answer() -> None:
    # on the loop's virtual clock: the offsets are the jitter alone, whatever the machine's load
    emu = Emulator(
        [ProjectSettings(PID, KEY, users=USERS)],
        faults=Faults(seed=2, arrival_jitter=0.05),
        clock=anyio.current_time,
    )
    sent: list[float] = []
    async with client(emu) as c:
        for i in range(12):
            sent.append(anyio.current_time())
            assert (await c.post(UPDATE, json=body(i))).status_code == 200
    counted = [entry.t for entry in emu.stats(PID).log]
    offsets = [t - s for t, s in zip(counted, sent, strict=True)]
    # each call is counted after its own delay, drawn in [0, 0.05]
    assert all(0.0 <= o <= 0.05 + 1e-9 for o in offsets)
    assert max(offsets) - min(offsets) > 0.01


def _fields(faults: Faults) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(faults)


# -- faults that leave the update applied, or not applied, whatever the answer says ------------

PATCH, PATCH_BATCH = "/v1/mgmt/user/patch", "/v1/mgmt/user/patch/batch"
WRITES = (UPDATE, PATCH, PATCH_BATCH)
#: users with a phone already, so that an answer can show the old one
HOLDERS = [{"loginId": f"h{i}@example.com", "phone": f"+1212555{i:04d}"} for i in range(3)]
NEW = {"h0@example.com": "+14155550100", "h1@example.com": "+14155550101"}


def holders(faults: Faults, clock: Callable[[], float] = time.monotonic, **budget: Any) -> Emulator:
    settings = ProjectSettings(PID, KEY, users=HOLDERS, **budget)
    return Emulator([settings], faults=faults, clock=clock)


async def write(c: httpx.AsyncClient, path: str) -> httpx.Response:
    """Set the phones of ``NEW`` through ``path`` (one user, h0, unless it is the batch)."""
    if path == UPDATE:
        doc = {"loginId": "h0@example.com", "phone": NEW["h0@example.com"], "verified": True}
        return await c.post(UPDATE, json={**doc, "failOnConflict": True})
    if path == PATCH:
        return await c.patch(
            PATCH, json={"loginId": "h0@example.com", "phone": NEW["h0@example.com"]}
        )
    users = [{"loginId": login_id, "phone": phone} for login_id, phone in NEW.items()]
    return await c.patch(PATCH_BATCH, json={"users": users})


def phones(emu: Emulator) -> dict[str, str]:
    return {u["loginIds"][0]: u["phone"] for u in emu.users(PID)}


def written(path: str) -> dict[str, str]:
    """The phones of every holder once ``path`` applied its write."""
    before = {u["loginId"]: u["phone"] for u in HOLDERS}
    return before | (NEW if path == PATCH_BATCH else {"h0@example.com": NEW["h0@example.com"]})


@pytest.mark.parametrize("path", WRITES)
async def test_applied_500_applies_the_write_then_answers_a_json_500(path: str) -> None:
    emu = holders(Faults(applied_500=1.0))
    async with client(emu) as c:
        response = await write(c, path)
    assert response.status_code == 500
    assert response.json()["errorCode"] == "E000500"
    assert phones(emu) == written(path)
    assert [e.fault for e in emu.stats(PID).log] == ["applied_500"]
    assert emu.stats(PID).requests == {(path, 500): 1}


@pytest.mark.parametrize("path", WRITES)
@pytest.mark.parametrize(("kind", "content"), [("empty_200", b""), ("empty_object_200", b"{}")])
async def test_empty_200s_apply_the_write(path: str, kind: str, content: bytes) -> None:
    emu = holders(Faults(**{kind: 1.0}))  # type: ignore[arg-type]
    async with client(emu) as c:
        response = await write(c, path)
    assert response.status_code == 200
    assert response.content == content
    assert phones(emu) == written(path)
    assert emu.stats(PID).updates == {
        login_id: 1 for login_id in (NEW if path == PATCH_BATCH else ["h0@example.com"])
    }
    assert [e.fault for e in emu.stats(PID).log] == [kind]


@pytest.mark.parametrize("path", WRITES)
async def test_lost_answer_applies_every_write_then_drops_the_connection(path: str) -> None:
    emu = holders(Faults(lost_answer=1.0))
    async with client(emu) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            await write(c, path)
    assert phones(emu) == written(path)
    assert emu.stats(PID).requests == {(path, 0): 1}


@pytest.mark.parametrize("path", WRITES)
async def test_timeout_applies_every_write_and_answers_after_the_clients_timeout(
    path: str,
) -> None:
    emu = holders(Faults(timeout=1.0, timeout_delay=0.5))  # a small delay serves a test
    async with client(emu, timeout=0.05) as c:
        with pytest.raises(httpx.ReadTimeout):
            await write(c, path)
    assert phones(emu) == written(path)


@pytest.mark.parametrize("path", WRITES)
async def test_unapplied_200_answers_the_user_as_stored(path: str) -> None:
    emu = holders(Faults(unapplied_200=1.0))
    async with client(emu) as c:
        response = await write(c, path)
    assert response.status_code == 200
    document = response.json()
    shown = document["patchedUsers"] if path == PATCH_BATCH else [document["user"]]
    old = {u["loginId"]: u["phone"] for u in HOLDERS}
    assert {u["loginIds"][0]: u["phone"] for u in shown} == {
        login_id: old[login_id] for login_id in (NEW if path == PATCH_BATCH else ["h0@example.com"])
    }
    assert phones(emu) == old
    assert emu.stats(PID).updates == {}
    assert [e.fault for e in emu.stats(PID).log] == ["unapplied_200"]


@pytest.mark.parametrize("path", WRITES)
async def test_ignore_update_answers_the_user_as_if_applied(path: str) -> None:
    emu = holders(Faults(ignore_update=1.0))
    async with client(emu) as c:
        response = await write(c, path)
    document = response.json()
    shown = document["patchedUsers"] if path == PATCH_BATCH else [document["user"]]
    assert {u["loginIds"][0]: u["phone"] for u in shown} == {
        login_id: NEW[login_id] for login_id in (NEW if path == PATCH_BATCH else ["h0@example.com"])
    }
    assert phones(emu) == {u["loginId"]: u["phone"] for u in HOLDERS}


async def test_unapplied_200_spares_reads_and_errors() -> None:
    emu = holders(Faults(unapplied_200=1.0))
    async with client(emu) as c:
        loaded = await c.get("/v1/mgmt/user", params={"loginId": "h0@example.com"})
        nobody = {"loginId": "nobody@example.com", "phone": "+12125550009"}
        missing = await c.post(UPDATE, json=nobody)
    assert loaded.status_code == 200 and loaded.json()["user"]["phone"] == "+12125550000"
    assert missing.status_code == 404
    assert [e.fault for e in emu.stats(PID).log] == [None, None]


async def test_writes_only_leaves_reads_clean_and_writes_faulty() -> None:
    emu = holders(Faults(error_500=1.0, writes_only=True))
    async with client(emu) as c:
        loaded = await c.get("/v1/mgmt/user", params={"loginId": "h0@example.com"})
        found = await c.post("/v2/mgmt/user/search", json={"loginIds": ["h1@example.com"]})
        statuses = [(await write(c, path)).status_code for path in WRITES]
    assert loaded.status_code == 200 and loaded.json()["user"]["phone"] == "+12125550000"
    assert found.status_code == 200 and found.json()["total"] == 1
    assert statuses == [500, 500, 500]
    assert phones(emu) == {u["loginId"]: u["phone"] for u in HOLDERS}


def test_writes_only_draws_the_same_faults_for_writes() -> None:
    base = Faults(seed=8, error_503=0.3, lost_answer=0.2, latency=0.01, jitter=0.01)
    everywhere, writes = FaultPicker(base), FaultPicker(replace(base, writes_only=True))
    kinds = []
    for i in range(300):
        key = f"call {i}".encode()
        read_a, read_b = everywhere.pick(key, faulty=True), writes.pick(key, faulty=True)
        assert read_b.kind is None and read_b.latency == read_a.latency
        write_a = everywhere.pick(key, faulty=True, write=True)
        write_b = writes.pick(key, faulty=True, write=True)
        assert write_a == write_b
        kinds.append(write_a.kind)
    assert {FaultKind.ERROR_503, FaultKind.LOST_ANSWER, None} <= set(kinds)


def test_new_kinds_take_only_calls_that_drew_no_fault() -> None:
    base = Faults(seed=6, error_500=0.1, drop=0.1, timeout=0.1, lost_answer=0.1, ignore_update=0.1)
    extended = replace(
        base, applied_500=0.1, empty_200=0.1, empty_object_200=0.1, unapplied_200=0.1
    )
    old, new = FaultPicker(base), FaultPicker(extended)
    taken: set[FaultKind] = set()
    for i in range(500):
        key = f"call {i}".encode()
        before, after = old.pick(key, faulty=True), new.pick(key, faulty=True)
        if before.kind is not None:
            assert after.kind == before.kind
        elif after.kind is not None:
            taken.add(after.kind)
    assert taken == {
        FaultKind.APPLIED_500,
        FaultKind.EMPTY_200,
        FaultKind.EMPTY_OBJECT_200,
        FaultKind.UNAPPLIED_200,
    }


@pytest.mark.virtual_time
async def test_write_latency_holds_a_writes_answer_after_applying_it() -> None:
    emu = holders(Faults(write_latency=2.0), clock=anyio.current_time, rate_limit=3)
    answered: dict[str, float] = {}
    async with client(emu, timeout=None) as c:
        started = anyio.current_time()
        loaded = await c.get("/v1/mgmt/user", params={"loginId": "h0@example.com"})
        answered["load"] = anyio.current_time() - started

        async def patch() -> None:
            await write(c, PATCH)
            answered["patch"] = anyio.current_time() - started

        async with anyio.create_task_group() as group:
            group.start_soon(patch)
            await anyio.sleep(1.0)
            assert phones(emu)["h0@example.com"] == NEW["h0@example.com"]  # applied already
            assert "patch" not in answered  # but not answered yet
        assert (await c.post("/v2/mgmt/user/search", json={})).status_code == 200
        after = anyio.current_time()
        limited = await write(c, UPDATE)  # the 4th call in the window: a 429, not held
        answered["429"] = anyio.current_time() - after
    assert loaded.status_code == 200 and answered["load"] == 0.0
    assert answered["patch"] == pytest.approx(2.0)
    assert limited.status_code == 429 and answered["429"] == 0.0
