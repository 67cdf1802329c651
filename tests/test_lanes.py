"""The client's HTTP (``remote.lanes``), through the client: transport failures, a base URL
nothing listens at, the lanes' reuse and closing."""

from __future__ import annotations

import contextlib
import functools
import socket
from typing import Any

import anyio
import httpx
import pytest

from batchphone.config import Secret
from batchphone.errors import FatalRemoteError, RemoteError, TransientError, UnreachableError
from batchphone.remote.client import LICENSE_PATH, DescopeClient
from tests.test_client import (
    BASE_URL,
    KEY,
    PROJECT_ID,
    REQUEST,
    USER,
    Handler,
    assert_no_key,
    client_for,
)

pytestmark = pytest.mark.anyio


def _raise(error: httpx.RequestError, request: httpx.Request) -> httpx.Response:
    error.request = request
    raise error


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectTimeout("connect timed out"),
        httpx.ReadTimeout("read timed out"),
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("connection reset"),
    ],
)
async def test_transport_failures_are_transient(error: httpx.RequestError) -> None:
    # once a call has reached the server: before, a failed connection means nothing listens
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == LICENSE_PATH:
            return httpx.Response(200, json={"rateLimitTier": "tier1"})
        raise error

    async with client_for(handler) as client:
        await client.fetch_license()
        with pytest.raises(TransientError) as caught:
            await client.update_phone(REQUEST)
    assert caught.value.http_status is None
    assert type(error).__name__ in str(caught.value)


def free_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def no_such_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names under ``.invalid`` fail to resolve as a DNS failure does, without asking any DNS."""
    resolve = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name.rstrip(".").endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def real_client(base_url: str, key: str = KEY) -> DescopeClient:
    """A client with httpx's own transport: real sockets, to loopback only."""
    return DescopeClient(project_id=PROJECT_ID, management_key=Secret(key), base_url=base_url)


async def test_nothing_listening_on_the_first_call_is_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with real_client(url) as client:
        with pytest.raises(UnreachableError) as caught:
            await client.fetch_license()  # the license call is every run's first
        with pytest.raises(UnreachableError):
            await client.update_phone(REQUEST)
    error = caught.value
    assert error.exit_code == 3
    assert isinstance(error, FatalRemoteError)
    assert str(error).startswith(f"cannot reach {url}: connection refused")
    assert "rerun" not in str(error)  # the summary's next step says what to do, once
    assert error.base_url == url
    assert "\n" not in str(error)


async def test_a_host_name_that_does_not_resolve_is_unreachable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    no_such_host(monkeypatch)
    async with real_client("http://api.batchphone.invalid") as client:
        with pytest.raises(UnreachableError) as caught:
            await client.load_user("ada@example.com")
    assert str(caught.value).startswith(
        "cannot reach http://api.batchphone.invalid: the host name does not resolve"
    )


async def test_no_connection_in_time_on_the_first_call_is_unreachable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out", request=request)

    async with client_for(handler, timeout=7.5) as client:
        with pytest.raises(UnreachableError) as caught:
            await client.fetch_license()
    assert str(caught.value).startswith(f"cannot reach {BASE_URL}: no connection within 7.5s")


async def test_an_unreachable_url_shows_no_credentials() -> None:
    url = f"http://admin:{KEY}@127.0.0.1:{free_port()}"
    async with real_client(url) as client:
        with pytest.raises(UnreachableError) as caught:
            await client.fetch_license()
    assert_no_key(caught.value)
    assert "admin" not in str(caught.value)
    assert str(caught.value).startswith("cannot reach http://127.0.0.1:")


@pytest.mark.parametrize(
    "first",
    [
        lambda request: httpx.Response(500, text="oops"),
        lambda request: httpx.Response(401, json={}),
        functools.partial(_raise, httpx.ReadTimeout("slow")),
        functools.partial(_raise, httpx.RemoteProtocolError("dropped")),
    ],
    ids=["500", "401", "read timeout", "dropped"],
)
async def test_once_a_call_reached_the_server_a_refused_connection_is_transient(
    first: Handler,
) -> None:
    # each of these left the process (a server answered, or may have): the server exists
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) == 1:
            return first(request)
        raise httpx.ConnectError("All connection attempts failed", request=request)

    async with client_for(handler) as client:
        with contextlib.suppress(RemoteError):
            await client.update_phone(REQUEST)
        assert client.lanes.reached
        with pytest.raises(TransientError) as caught:
            await client.update_phone(REQUEST)
    assert not isinstance(caught.value, UnreachableError)
    assert "ConnectError" in str(caught.value)


async def test_a_base_url_that_is_not_http_is_fatal() -> None:
    client = DescopeClient(
        project_id=PROJECT_ID, management_key=Secret(KEY), base_url="ftp://127.0.0.1"
    )
    async with client:
        with pytest.raises(FatalRemoteError, match="not an http"):
            await client.update_phone(REQUEST)


async def test_the_key_never_appears_in_transport_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"refused: {request.headers['Authorization']}")

    async with client_for(handler) as client:
        with pytest.raises(UnreachableError) as first:  # no call has reached the server
            await client.update_phone(REQUEST)
        client.lanes.reached = True
        with pytest.raises(TransientError) as caught:
            await client.update_phone(REQUEST)
    for error in (first.value, caught.value):
        assert_no_key(error)
        assert error.__cause__ is None
        assert error.__suppress_context__


async def test_one_lane_per_call_in_flight_reused_and_closed() -> None:
    release = anyio.Event()
    in_flight = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight
        in_flight += 1
        if in_flight == 5:
            release.set()
        await release.wait()
        return httpx.Response(200, json={"user": USER})

    client = DescopeClient(
        project_id=PROJECT_ID,
        management_key=Secret(KEY),
        base_url=BASE_URL,
        max_connections=3,
        transport=httpx.MockTransport(handler),
    )
    async with client:
        async with anyio.create_task_group() as group:
            for _ in range(5):
                group.start_soon(client.update_phone, REQUEST)
        lanes = list(client.lanes._lanes)
        assert len(lanes) == 5  # one single-connection client per call in flight
        assert len(client.lanes._idle) == 5
        await client.update_phone(REQUEST)
        assert len(client.lanes._lanes) == 5  # a warm lane was reused, none created
    assert all(lane.is_closed for lane in lanes)
    assert client.lanes._lanes == [] and client.lanes._idle == []
    await client.aclose()  # idempotent
