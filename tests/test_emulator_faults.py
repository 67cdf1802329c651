"""Injected faults, in-process: each kind, latency, seeded replay, and their validation."""

from __future__ import annotations

import contextlib
import time
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


async def test_arrival_jitter_delays_the_count_not_only_the_answer() -> None:
    emu = make(Faults(seed=2, arrival_jitter=0.05))
    sent: list[float] = []
    async with client(emu) as c:
        for i in range(12):
            sent.append(time.monotonic())
            assert (await c.post(UPDATE, json=body(i))).status_code == 200
    counted = [entry.t for entry in emu.stats(PID).log]
    offsets = [t - s for t, s in zip(counted, sent, strict=True)]
    # the emulator's clock is time.monotonic: each call is counted after its own delay
    assert all(0.0 <= o < 0.05 + 0.02 for o in offsets)
    assert max(offsets) - min(offsets) > 0.01


def _fields(faults: Faults) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(faults)
