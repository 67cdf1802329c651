"""DescopeClient against httpx.MockTransport handlers that answer in the real API's shapes."""

from __future__ import annotations

import functools
import json
import platform
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest

from batchphone import __version__
from batchphone.config import Secret
from batchphone.errors import (
    FatalRemoteError,
    RateLimitedError,
    RemoteError,
    TransientError,
)
from batchphone.models import ApiOutcome, Reason, Status, UpdateRequest
from batchphone.remote.calls import call_with_retry
from batchphone.remote.client import DescopeClient, derive_base_url
from batchphone.remote.ratelimit import RateLimiter
from batchphone.remote.retry import Attempted, RetryPolicy
from tests.virtual import virtual_backend

pytestmark = pytest.mark.anyio

PROJECT_ID = "P2abcdefghijklmnopqrstuvwxyz0123"
KEY = "K2mgmtKEYsecret0123456789abcdefXYZ"
BASE_URL = "http://127.0.0.1:9"
USER = {
    "loginIds": ["ada@example.com"],
    "userId": "U2ada",
    "email": "ada@example.com",
    "phone": "+14155550100",
    "verifiedEmail": True,
    "verifiedPhone": True,
    "status": "enabled",
    "roleNames": [],
    "userTenants": [],
    "customAttributes": {},
    "createdTime": 1700000000,
}
REQUEST = UpdateRequest(row=1, login_id="ada@example.com", phone="+14155550100", verified=True)

Handler = Callable[[httpx.Request], httpx.Response]


def error_body(code: str, description: str, message: str = "") -> dict[str, str]:
    return {"errorCode": code, "errorDescription": description, "errorMessage": message}


def client_for(handler: Handler, **kwargs: Any) -> DescopeClient:
    return DescopeClient(
        project_id=PROJECT_ID,
        management_key=Secret(KEY),
        base_url=BASE_URL,
        transport=httpx.MockTransport(handler),
        **kwargs,
    )


def answer(status: int, body: object = None, **kwargs: Any) -> Handler:
    """A handler that gives every request the same answer."""

    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body, **kwargs)
        return httpx.Response(status, json=body, **kwargs)

    return handler


def assert_no_key(*objects: object) -> None:
    for obj in objects:
        assert KEY not in str(obj)
        assert KEY not in repr(obj)
        if isinstance(obj, RemoteError):
            assert KEY not in str(obj.error_message)


# -- base URL ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("project_id", "expected"),
    [
        ("Puse12aAc4T2V93bddihGEx2Ryhc8e5Z", "https://api.use1.descope.com"),
        ("Peuc12vmUmV4rTGLvVQRq1234567890a", "https://api.euc1.descope.com"),
        ("P2abcdefghijklmnopqrstuvwxyz012", "https://api.descope.com"),
        ("short", "https://api.descope.com"),
    ],
)
def test_base_url_is_derived_as_the_sdks_do(project_id: str, expected: str) -> None:
    assert derive_base_url(project_id) == expected


def test_the_derivation_matches_the_official_sdk() -> None:
    from descope._http_client_base import HTTPClientBase

    for project_id in ["Puse12aAc4T2V93bddihGEx2Ryhc8e5Z", "P2short"]:
        assert derive_base_url(project_id) == HTTPClientBase.base_url_for_project_id(project_id)


# -- what is sent ------------------------------------------------------------------------


async def test_update_phone_sends_the_sdk_headers_and_body() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"user": USER})

    async with client_for(handler) as client:
        await client.update_phone(
            UpdateRequest(row=1, login_id="ada@example.com", phone="+14155550100", verified=None)
        )
    request = seen[0]
    assert request.method == "POST"
    assert str(request.url) == f"{BASE_URL}/v1/mgmt/user/update/phone"
    assert request.headers["Authorization"] == f"Bearer {PROJECT_ID}:{KEY}"
    assert request.headers["x-descope-project-id"] == PROJECT_ID
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == f"batchphone/{__version__}"
    assert request.headers["x-descope-sdk-name"] == "batchphone"
    assert request.headers["x-descope-sdk-version"] == __version__
    assert request.headers["x-descope-sdk-python-version"] == platform.python_version()
    assert "x-descope-license" not in request.headers
    assert json.loads(request.content) == {
        "loginId": "ada@example.com",
        "phone": "+14155550100",
        "verified": False,  # a row without a value: false said out loud, never null
        "failOnConflict": True,
    }


async def test_the_license_tier_is_sent_on_every_later_call() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/mgmt/license":
            return httpx.Response(200, json={"rateLimitTier": "tier3"})
        return httpx.Response(200, json={"user": USER})

    async with client_for(handler) as client:
        assert await client.fetch_license() == "tier3"
        await client.update_phone(REQUEST)
        await client.update_phone(REQUEST)
    assert seen[0].method == "GET"
    assert client.license == "tier3"
    assert [r.headers.get("x-descope-license") for r in seen[1:]] == ["tier3", "tier3"]
    assert len(seen) == 3


@pytest.mark.parametrize(
    "handler",
    [
        answer(404, error_body("E000000", "Not found")),
        answer(500, "<html>oops</html>"),
        answer(200, {"rateLimitTier": "tier1\r\nX-Evil: 1"}),
        answer(200, "not json"),
    ],
)
async def test_a_failing_license_call_is_not_fatal(handler: Handler) -> None:
    async with client_for(handler) as client:
        assert await client.fetch_license() is None
        assert client.license is None


async def test_a_rate_limited_license_call_raises_for_the_limiter() -> None:
    handler = answer(429, error_body("E130429", "Rate limit"), headers={"Retry-After": "60"})
    async with client_for(handler) as client:
        with pytest.raises(RateLimitedError) as caught:
            await client.fetch_license()
    assert caught.value.retry_after == 60


async def test_a_license_timeout_is_not_fatal() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    async with client_for(handler) as client:
        assert await client.fetch_license() is None


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_license_call_is_fatal(status: int) -> None:
    async with client_for(answer(status, error_body("E011005", "Unauthorized"))) as client:
        with pytest.raises(FatalRemoteError) as caught:
            await client.fetch_license()
    assert caught.value.http_status == status
    assert_no_key(caught.value)


# -- the other endpoints -------------------------------------------------------------------


async def test_load_user_finds_or_misses() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.method == "GET"
        assert request.url.path == "/v1/mgmt/user"
        if request.url.params["loginId"] == "ada@example.com":
            return httpx.Response(200, json={"user": USER})
        return httpx.Response(404, json=error_body("E112102", "User not found"))

    async with client_for(handler) as client:
        loaded = await client.load_user("ada@example.com")
        assert loaded is not None and loaded.raw == USER
        assert await client.load_user("nobody@example.com") is None


@pytest.mark.parametrize(
    ("handler", "error"),
    [
        (answer(400, error_body("E011004", "Invalid argument")), RemoteError),
        (answer(401, error_body("E011005", "Unauthorized")), FatalRemoteError),
        (answer(503, "<p>down</p>"), TransientError),
        (answer(429, error_body("E130429", "Rate limit")), RateLimitedError),
    ],
)
async def test_load_user_errors(handler: Handler, error: type[RemoteError]) -> None:
    async with client_for(handler) as client:
        with pytest.raises(error) as caught:
            await client.load_user("ada@example.com")
    assert type(caught.value) is error


async def test_search_users_sends_login_ids_and_reads_the_page() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert (request.method, request.url.path) == ("POST", "/v2/mgmt/user/search")
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"users": [USER], "total": 7})

    async with client_for(handler) as client:
        users, total = await client.search_users(["ada@example.com", "bob"], page=2, limit=50)
    assert ([u.raw for u in users], total) == ([USER], 7)
    assert seen == [
        {"loginIds": ["ada@example.com", "bob"], "page": 2, "limit": 50, "withTestUser": True}
    ]


async def test_search_users_without_a_list_is_transient() -> None:
    async with client_for(answer(200, {"total": 3})) as client:
        with pytest.raises(TransientError):
            await client.search_users(["ada@example.com"])


async def test_patch_batch_returns_per_user_failures_inside_a_200() -> None:
    seen: list[dict[str, Any]] = []
    body = {
        "patchedUsers": [USER],
        "failedUsers": [{"failure": "user not found", "user": {"loginId": "bob"}}],
        "additionalErrors": {},
    }

    def handler(request: httpx.Request) -> httpx.Response:
        assert (request.method, request.url.path) == ("PATCH", "/v1/mgmt/user/patch/batch")
        seen.append(json.loads(request.content))
        return httpx.Response(200, json=body)

    patches = [{"loginId": "ada@example.com", "phone": "+14155550100", "verifiedPhone": True}]
    async with client_for(handler) as client:
        answer = await client.patch_batch(patches)
    assert [u.raw for u in answer.patched] == [USER]
    assert [u.login_ids if u else None for u in answer.failed] == [()]  # "loginId": not read
    assert seen == [{"users": patches}]


@pytest.mark.parametrize(
    ("handler", "error"),
    [
        (answer(500, error_body("E000001", "Internal")), TransientError),
        (answer(400, error_body("E011002", "Missing arguments")), RemoteError),
        (answer(403, error_body("E011006", "Forbidden")), FatalRemoteError),
        (answer(200, "not json"), TransientError),
    ],
)
async def test_patch_batch_errors(handler: Handler, error: type[RemoteError]) -> None:
    async with client_for(handler) as client:
        with pytest.raises(error) as caught:
            await client.patch_batch([{"loginId": "ada@example.com"}])
    assert type(caught.value) is error


# -- the management key stays secret ---------------------------------------------------------


def echo(status: int) -> Handler:
    """A misbehaving proxy that echoes the request headers back in its error page."""

    def handler(request: httpx.Request) -> httpx.Response:
        headers = "\n".join(f"{k}: {v}" for k, v in request.headers.items())
        return httpx.Response(status, text=f"<pre>{headers}</pre>")

    return handler


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 429, 500, 503])
async def test_the_key_never_appears_in_errors_or_reprs(status: int) -> None:
    client = client_for(echo(status))
    async with client:
        try:
            outcome: object = await client.update_phone(REQUEST)
        except RemoteError as exc:
            outcome = exc
        lanes = client.lanes._lanes
        assert lanes
        assert_no_key(outcome, client, *lanes, *(lane.headers for lane in lanes))
    if isinstance(outcome, ApiOutcome):
        assert outcome.error_message is not None
        assert "********" in outcome.error_message


def test_repr_shows_the_project_not_the_key() -> None:
    client = client_for(answer(200, {}))
    assert repr(client) == f"DescopeClient(project_id={PROJECT_ID!r}, base_url={BASE_URL!r})"
    assert_no_key(client, vars(client))


def test_a_client_needs_a_project_and_a_key() -> None:
    with pytest.raises(ValueError, match="project_id"):
        DescopeClient(project_id="", management_key=Secret(KEY), base_url=BASE_URL)
    with pytest.raises(ValueError, match="management_key"):
        DescopeClient(project_id=PROJECT_ID, management_key=Secret(""), base_url=BASE_URL)
    with pytest.raises(TypeError, match="Secret"):  # a plain str is never accepted
        DescopeClient(project_id=PROJECT_ID, management_key=KEY, base_url=BASE_URL)  # type: ignore[arg-type]


# -- against the emulator --------------------------------------------------------------------
# The same client against batchphone's own emulator in-process: the shapes above agree with it,
# and the limiter keeps a run inside the emulator's sliding budget.

EMU_USERS = [
    {"loginId": "ada@example.com", "email": "ada@example.com", "phone": "+14155550100"},
    {"loginId": "bob@example.com"},
    {"loginId": "+14155550199"},  # a user whose login id is a phone number
]


def emulated(**settings: Any) -> Any:
    from batchphone.emulator import Emulator, ProjectSettings, complete_user

    users = [complete_user(seed, position=i) for i, seed in enumerate(EMU_USERS)]
    project = ProjectSettings(project_id=PROJECT_ID, management_key=KEY, users=users, **settings)
    return Emulator([project], clock=anyio.current_time)


def emulator_client(emulator: Any, *, key: str = KEY) -> DescopeClient:
    return DescopeClient(
        project_id=PROJECT_ID,
        management_key=Secret(key),
        base_url=BASE_URL,
        transport=emulator.transport(),
    )


async def test_emulator_answers_map_like_the_api() -> None:
    emulator = emulated(license_tier="tier2")
    async with emulator_client(emulator) as client:
        assert await client.fetch_license() == "tier2"
        updated = await client.update_phone(
            UpdateRequest(row=1, login_id="bob@example.com", phone="+14155550111", verified=True)
        )
        missing = await client.update_phone(
            UpdateRequest(row=2, login_id="nobody@example.com", phone="+14155550111", verified=True)
        )
        invalid = await client.update_phone(
            UpdateRequest(row=3, login_id="bob@example.com", phone="0415555", verified=True)
        )
        conflict = await client.update_phone(
            UpdateRequest(row=4, login_id="ada@example.com", phone="+14155550199", verified=True)
        )
        assert await client.load_user("nobody@example.com") is None
        loaded = await client.load_user("bob@example.com")
        users, total = await client.search_users(["ada@example.com", "bob@example.com"])
    assert updated.status is Status.UPDATED
    assert updated.user is not None
    assert (updated.user.phone, updated.user.verified_phone) == ("+14155550111", True)
    assert (missing.status, missing.error_code) == (Status.NOT_FOUND, "E112102")
    assert (invalid.status, invalid.reason, invalid.error_code) == (
        Status.FAILED,
        Reason.REJECTED,
        "E011003",
    )
    assert (conflict.status, conflict.error_code) == (Status.CONFLICT, "E062107")
    assert loaded is not None
    assert loaded.phone == "+14155550111"
    assert total == 2
    assert sorted(u.login_ids[0] for u in users) == ["ada@example.com", "bob@example.com"]


async def test_emulator_refuses_a_wrong_key_fatally() -> None:
    async with emulator_client(emulated(), key="K2wrong0000000000000000000000000") as client:
        with pytest.raises(FatalRemoteError, match="wrong management key") as caught:
            await client.update_phone(REQUEST)
    assert caught.value.http_status == 401
    assert_no_key(caught.value)


@pytest.mark.parametrize(
    ("calls", "expect_429"), [(5, False), (8, True)], ids=["in-budget", "over-budget"]
)
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_limiter_keeps_a_run_inside_the_emulators_budget(
    backend: str, calls: int, expect_429: bool
) -> None:
    # run by hand on virtual time (many windows in no time); the emulator shares the loop's clock
    name, options = virtual_backend(backend)

    async def run() -> tuple[list[Attempted[ApiOutcome]], Any]:
        emulator = emulated(rate_limit=5, rate_window=1.0, penalty=3.0)
        limiter = RateLimiter(calls, 1.0)
        results: list[Attempted[ApiOutcome]] = []

        async with emulator_client(emulator) as client:

            async def worker(rows: range) -> None:
                for row in rows:
                    request = UpdateRequest(
                        row=row, login_id="ada@example.com", phone="+14155550100", verified=True
                    )
                    attempted = await call_with_retry(
                        functools.partial(client.update_phone, request),
                        limiter=limiter,
                        policy=RetryPolicy(wait_jitter=0.0),
                    )
                    results.append(attempted)

            async with anyio.create_task_group() as group:
                for start in range(0, 40, 10):
                    group.start_soon(worker, range(start, start + 10))
        return results, emulator.stats(PROJECT_ID)

    results, stats = anyio.run(run, backend=name, backend_options=options)
    assert len(results) == 40
    assert all(r.value is not None and r.value.status is Status.UPDATED for r in results)
    rate_limited = sum(r.rate_limited for r in results)
    if expect_429:
        assert rate_limited > 0
        assert stats.rate_limited == rate_limited
    else:
        assert rate_limited == 0
        assert stats.max_window_calls <= 5
