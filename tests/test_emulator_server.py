"""The emulator over real loopback sockets: ServerThread, drops and timeouts on the wire."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest

from batchphone.emulator import Emulator, Faults, ProjectSettings, load_users
from batchphone.emulator.server import ServerThread, bind_loopback, check_loopback
from batchphone.errors import UsageError

PID, KEY = "P1", "K1"
HEADERS = {"Authorization": f"Bearer {PID}:{KEY}"}
UPDATE = "/v1/mgmt/user/update/phone"
ALICE = {"loginId": "alice@example.com", "phone": "+14155550132", "failOnConflict": True}


@pytest.fixture
def emu(samples: Path) -> Emulator:
    return Emulator([ProjectSettings(PID, KEY, users=load_users(samples / "users.csv"))])


def test_server_thread_serves_on_loopback_and_stops(emu: Emulator) -> None:
    with ServerThread(emu) as base_url:
        assert base_url.startswith("http://127.0.0.1:")
        response = httpx.get(f"{base_url}/v1/mgmt/user?loginId=bob@example.com", headers=HEADERS)
        assert response.json()["user"]["phone"] == "+442079460000"
        stats = httpx.get(f"{base_url}/_emulator/stats").json()
        assert stats["projects"][PID]["calls"] == 1
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base_url}/v1/mgmt/license", headers=HEADERS, timeout=1)


def test_answers_are_not_held_back_by_delayed_acks(emu: Emulator) -> None:
    # without TCP_NODELAY each answer of a kept-alive connection waits about 40 ms
    with ServerThread(emu) as base_url, httpx.Client(base_url=base_url, headers=HEADERS) as client:
        client.get("/v1/mgmt/license")
        started = time.perf_counter()
        for _ in range(20):
            client.post(UPDATE, json=ALICE)
        assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize(("kind", "applied"), [("drop", False), ("lost_answer", True)])
def test_a_dropped_connection_is_a_protocol_error_on_the_wire(
    emu: Emulator, kind: str, applied: bool
) -> None:
    emu.set_faults(Faults(**{kind: 1.0}))  # type: ignore[arg-type]
    with ServerThread(emu) as base_url, httpx.Client(base_url=base_url, headers=HEADERS) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            client.post(UPDATE, json=ALICE)
        emu.set_faults(Faults())
        assert client.get("/v1/mgmt/license").status_code == 200  # the server lives on
    assert (emu.user(PID, "alice@example.com")["phone"] != "") is applied  # type: ignore[index]


def test_a_held_answer_times_out_and_does_not_hold_the_server(emu: Emulator) -> None:
    emu.set_faults(Faults(timeout=1.0, timeout_delay=60.0))
    started = time.monotonic()
    with (
        ServerThread(emu) as base_url,
        httpx.Client(base_url=base_url, headers=HEADERS) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        client.post(UPDATE, json=ALICE, timeout=0.2)
    assert time.monotonic() - started < 5.0  # stopping did not wait for the 60 s answer
    assert emu.user(PID, "alice@example.com")["phone"] == "+14155550132"  # type: ignore[index]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_hosts_are_accepted(host: str) -> None:
    check_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.1", "::", "example.com", ""])
def test_other_hosts_are_refused(emu: Emulator, host: str) -> None:
    with pytest.raises(UsageError, match="loopback only"):
        check_loopback(host)
    with pytest.raises(UsageError):
        ServerThread(emu, host=host)


def test_a_port_in_use_is_a_usage_error() -> None:
    taken = bind_loopback("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        with pytest.raises(UsageError, match=f"cannot listen on 127.0.0.1:{port}"):
            bind_loopback("127.0.0.1", port)
    finally:
        taken.close()
    assert taken.family == socket.AF_INET
