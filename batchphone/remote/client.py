"""Descope's management API over httpx keep-alive connections: HTTP in, domain results out.

The client knows no files, no rows and no rate: it sends one call and says what the answer
means. A final answer for a row is an ``ApiOutcome``; anything worth another try raises
``TransientError``, a 429 raises ``RateLimitedError`` (the limiter pauses everyone), and an
answer no later call can change (401, 403) raises ``FatalRemoteError``. A call that cannot
connect before any call of this client has (a refused connection, a name that does not resolve)
raises ``UnreachableError``: nothing listens at the base URL, so retrying each row is pointless;
once a call has connected, the same error is transient (the server may be restarting).

The management key lives in the ``Authorization`` header (httpx masks it in reprs) and in a
``Secret``; error messages are built from status codes and response bodies, and bodies are
scrubbed of the key in case a proxy echoes the request back.
"""

from __future__ import annotations

import email.utils
import html
import json
import platform
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from types import TracebackType
from typing import Any, Final, Self, TypedDict, TypeVar

import httpx

from batchphone.config import Secret
from batchphone.errors import (
    FatalRemoteError,
    RateLimitedError,
    RemoteError,
    TransientError,
    UnreachableError,
)
from batchphone.logs import get_logger
from batchphone.models import ApiOutcome, Reason, Status, UpdateRequest, User
from batchphone.version import __version__

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _dumps_std(body: object) -> bytes:
    return _encoder.encode(body).encode()


_dumps: Callable[[object], bytes] = _dumps_std
_loads: Callable[[bytes], Any] = json.loads
try:  # orjson is optional: a faster encoder and decoder when it is installed
    import orjson
except ImportError:  # pragma: no cover - depends on the environment
    pass
else:
    _dumps = orjson.dumps
    _loads = orjson.loads

__all__ = ["DEFAULT_BASE_URL", "DescopeClient", "PatchAnswer", "UserPatch", "derive_base_url"]

E = TypeVar("E", bound=RemoteError)


class UserPatch(TypedDict):
    """One user of a ``PATCH /v1/mgmt/user/patch/batch`` body: the fields batchphone patches.

    The keys are the API's (``users[].loginId``, ``phone``, ``verifiedPhone``).
    """

    loginId: str
    phone: str
    verifiedPhone: bool


log = get_logger()

DEFAULT_BASE_URL: Final = "https://api.descope.com"
UPDATE_PHONE_PATH: Final = "/v1/mgmt/user/update/phone"
LOAD_USER_PATH: Final = "/v1/mgmt/user"
SEARCH_PATH: Final = "/v2/mgmt/user/search"
PATCH_BATCH_PATH: Final = "/v1/mgmt/user/patch/batch"
LICENSE_PATH: Final = "/v1/mgmt/license"

_USER_NOT_FOUND: Final = "E112102"
_PHONE_CONFLICT: Final = "E062107"
_DEFAULT_RETRY_AFTER: Final = 60.0
# 408 is a 4xx that means "try again"; every 5xx is retried (the retry budget is bounded)
_RETRY_4XX: Final = frozenset({408})
_TIER = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_SCRIPT_OR_STYLE = re.compile(r"<(script|style)\b.*?</\1\s*>", re.S | re.I)
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")
_EXCERPT = 200


@dataclass(frozen=True, slots=True)
class PatchAnswer:
    """A batch patch's answer: the users it patched, and those it failed (``None``: an entry
    without a usable user)."""

    patched: tuple[User, ...] = ()
    failed: tuple[User | None, ...] = ()

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> PatchAnswer:
        """Read ``patchedUsers`` and ``failedUsers`` (``[{"failure": ..., "user": {...}}]``)."""
        patched = [User.from_api(u) for u in data.get("patchedUsers") or () if isinstance(u, dict)]
        failed: list[User | None] = []
        for entry in data.get("failedUsers") or ():
            user = entry.get("user") if isinstance(entry, dict) else None
            failed.append(User.from_api(user) if isinstance(user, dict) else None)
        return cls(patched=tuple(patched), failed=tuple(failed))


def derive_base_url(project_id: str) -> str:
    """The API base URL for a project, as the official SDKs derive it.

    A project id of 32+ characters carries its region in characters 1..4
    (``Puse1...`` -> ``https://api.use1.descope.com``); shorter ids use the default.
    """
    if len(project_id) >= 32:
        return f"https://api.{project_id[1:5]}.descope.com"
    return DEFAULT_BASE_URL


@cache
def _tls_context() -> ssl.SSLContext:
    """The process's one TLS context (certifi's roots): ~25 ms of CPU to build, so once.

    An ``SSLContext`` is safe to share between clients and threads; a process that runs
    many jobs (a scheduler, the test suite) no longer builds one per run.
    """
    return httpx.create_ssl_context()


class DescopeClient:
    """One connection pool to one project's management API.

    It counts nothing: the run's call stack (``batchphone.remote.calls``) counts the calls it sends.
    """

    def __init__(
        self,
        *,
        project_id: str,
        management_key: Secret,
        base_url: str,
        timeout: float = 30.0,
        max_connections: int = 8,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not project_id:
            raise ValueError("project_id is empty")
        if not isinstance(management_key, Secret):
            raise TypeError("management_key must be a Secret")  # never a plain str to log
        if not management_key.reveal():
            raise ValueError("management_key is empty")
        self.project_id = project_id
        self.base_url = base_url.rstrip("/")
        self.license: str | None = None
        #: a call has connected to the server: from then on a refused connection is transient
        #: (the server may be restarting); before, it means nothing listens at ``base_url``
        self.reached = False
        self._key = management_key
        # the headers the official Python SDK sends, with batchphone's own name and version
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"batchphone/{__version__}",
            "x-descope-project-id": project_id,
            "x-descope-sdk-name": "batchphone",
            "x-descope-sdk-python-version": platform.python_version(),
            "x-descope-sdk-version": __version__,
        }
        self._headers = headers
        self._timeout = httpx.Timeout(timeout)
        self._transport = transport
        # One single-connection httpx.AsyncClient per call in flight ("lanes"), reused from a
        # free list, instead of one pool of N connections: httpcore's pool scans every
        # connection for every request, which at 16-64 calls in flight costs more CPU than the
        # calls themselves (see bench/results.md). There are as many lanes as calls were ever
        # in flight at once: the pool's workers (``max_connections``) bound that.
        self._lanes: list[httpx.AsyncClient] = []
        self._idle: list[httpx.AsyncClient] = []
        # one TLS context for every lane: building one costs ~20 ms, and a lane built late
        # delays its first call, which the server then counts closer to the next window's calls
        self._tls = _tls_context()

    def __repr__(self) -> str:
        return f"DescopeClient(project_id={self.project_id!r}, base_url={self.base_url!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection (idempotent)."""
        lanes, self._lanes, self._idle = self._lanes, [], []
        for lane in lanes:
            await lane.aclose()

    def _take_lane(self) -> httpx.AsyncClient:
        if self._idle:
            return self._idle.pop()  # the most recently used: its connection is warm
        # the Authorization header lives only inside httpx, which masks it in every repr
        secret = {"Authorization": f"Bearer {self.project_id}:{self._key.reveal()}"}
        lane = httpx.AsyncClient(
            base_url=self.base_url,
            headers={**secret, **self._headers},
            timeout=self._timeout,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            transport=self._transport,
            follow_redirects=False,
            verify=self._tls,
        )
        self._lanes.append(lane)
        return lane

    def _return_lane(self, lane: httpx.AsyncClient) -> None:
        if not lane.is_closed:  # closed: aclose() ran meanwhile
            self._idle.append(lane)

    # -- endpoints -----------------------------------------------------------------------
    async def fetch_license(self) -> str | None:
        """Ask for the project's rate-limit tier and send it as ``x-descope-license`` from now on.

        The SDKs do this so the CDN applies the right budget. Only 401/403 (the key is wrong, so
        every later call would fail too) and ``UnreachableError`` (nothing listens there) are
        fatal; a 429 raises ``RateLimitedError`` like every other call's; any other failure
        leaves the tier unset.
        """
        try:
            response = await self._send("GET", LICENSE_PATH, what="license")
        except TransientError as exc:
            log.warning("license_unavailable", error=exc.message)
            return None
        status = response.status_code
        if status in (401, 403):
            raise self._fatal(response, "license", self._error_fields(response)[0])
        if status == 429:  # the caller's limiter pauses every call, as for any 429
            self._raise_unless_final(response, "license", *self._error_fields(response))
        tier = self._json(response).get("rateLimitTier") if response.is_success else None
        if not isinstance(tier, str) or not _TIER.fullmatch(tier):
            log.warning("license_unavailable", http_status=status)
            return None
        self.license = tier
        self._headers["x-descope-license"] = tier
        for lane in self._lanes:
            lane.headers["x-descope-license"] = tier
        return tier

    async def update_phone(self, request: UpdateRequest) -> ApiOutcome:
        """``POST /v1/mgmt/user/update/phone``: the answer as a final outcome for the row.

        Raises ``TransientError`` (5xx, timeout, unusable 200), ``RateLimitedError`` (429) and
        ``FatalRemoteError`` (401/403).
        """
        body = {
            "loginId": request.login_id,
            "phone": request.phone,
            "verified": request.verified_sent,  # explicit: a missing flag un-verifies anyway
            "failOnConflict": request.fail_on_conflict,
        }
        response = await self._send("POST", UPDATE_PHONE_PATH, body=body, what="update phone")
        status = response.status_code
        if response.is_success:
            return ApiOutcome(
                Status.UPDATED, http_status=status, user=self._user(response, "update phone")
            )
        code, message = self._error_fields(response)
        self._raise_unless_final(response, "update phone", code, message)
        if status == 404 or code == _USER_NOT_FOUND:
            reason, outcome = Reason.USER_NOT_FOUND, Status.NOT_FOUND
        elif status == 409 or code == _PHONE_CONFLICT:
            reason, outcome = Reason.PHONE_CONFLICT, Status.CONFLICT
        else:
            reason, outcome = Reason.REJECTED, Status.FAILED
        return ApiOutcome(outcome, reason, status, code, message)

    async def load_user(self, login_id: str) -> User | None:
        """``GET /v1/mgmt/user?loginId=``: the user, or ``None`` when there is none."""
        response = await self._send(
            "GET", LOAD_USER_PATH, params={"loginId": login_id}, what="load user"
        )
        if response.is_success:
            return self._user(response, "load user")
        code, message = self._error_fields(response)
        self._raise_unless_final(response, "load user", code, message)
        if response.status_code == 404 or code == _USER_NOT_FOUND:
            return None
        raise self._error(RemoteError, response, "load user", code, message)

    async def search_users(
        self, login_ids: Sequence[str], *, page: int = 0, limit: int = 100
    ) -> tuple[list[User], int]:
        """``POST /v2/mgmt/user/search`` by login ids: one page of users and the total.

        Entries that are not user objects are dropped (the page's length is the total's).
        """
        # withTestUser: a login id named explicitly must be found even if it is a test user
        body = {"loginIds": list(login_ids), "page": page, "limit": limit, "withTestUser": True}
        response = await self._send("POST", SEARCH_PATH, body=body, what="search users")
        data = self._success_body(response, "search users")
        users = data.get("users")
        if not isinstance(users, list):
            raise self._error(TransientError, response, "search users", None, "no users list")
        total = data.get("total")
        found = [User.from_api(user) for user in users if isinstance(user, dict)]
        return found, total if isinstance(total, int) else len(users)

    async def patch_batch(self, users: Sequence[UserPatch]) -> PatchAnswer:
        """``PATCH /v1/mgmt/user/patch/batch``: the users patched and the users it failed.

        Per-user failures come back inside a 200 (``failedUsers``); the caller reads them.
        """
        body = {"users": list(users)}
        response = await self._send("PATCH", PATCH_BATCH_PATH, body=body, what="patch batch")
        return PatchAnswer.from_api(self._success_body(response, "patch batch"))

    # -- sending and reading -------------------------------------------------------------
    async def _send(
        self,
        method: str,
        path: str,
        *,
        what: str,
        body: object = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        content = None if body is None else _dumps(body)
        lane = self._take_lane()
        try:
            response = await lane.request(method, path, content=content, params=params)
        except httpx.UnsupportedProtocol:
            raise FatalRemoteError(
                f"{what}: the base URL {self.base_url!r} is not an http(s) URL"
            ) from None
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # no connection, so the request never left: nothing can have been applied
            if not self.reached:
                raise self._unreachable(exc) from None
            detail = self._scrub(str(exc)) or "no detail"
            raise TransientError(f"{what}: {type(exc).__name__}: {detail}") from None
        except httpx.TimeoutException as exc:
            self.reached = True  # connected: the request may have reached the server
            raise TransientError(f"{what}: no answer in time ({type(exc).__name__})") from None
        except httpx.RequestError as exc:
            self.reached = True
            detail = self._scrub(str(exc)) or "no detail"
            raise TransientError(f"{what}: {type(exc).__name__}: {detail}") from None
        finally:
            # after an error too: httpx drops a broken connection and the lane opens a new one
            self._return_lane(lane)
        self.reached = True
        return response

    def _unreachable(self, exc: httpx.TransportError) -> UnreachableError:
        """The error of a first call that could not connect: the base URL and why, one line."""
        url = httpx.URL(self.base_url)
        if url.userinfo:  # never print credentials a URL may carry
            url = url.copy_with(username=None, password=None)
        shown = self._scrub(str(url))
        return UnreachableError(
            # what to do is the summary's next step (models.next_step), said once
            f"cannot reach {shown}: {self._why_unreachable(exc)}; no row was sent",
            base_url=shown,
        )

    def _why_unreachable(self, exc: httpx.TransportError) -> str:
        if isinstance(exc, httpx.ConnectTimeout):
            return f"no connection within {self._timeout.connect or 0:g}s"
        causes = list(_causes(exc))  # httpx -> httpcore -> OSError -> the socket's errors
        if any(isinstance(cause, socket.gaierror) for cause in causes):
            return "the host name does not resolve"
        if any(isinstance(cause, ConnectionRefusedError) for cause in causes):
            return "connection refused (nothing is listening there)"
        return self._scrub(f"{type(exc).__name__}: {exc}")

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        """The body as a JSON object, or ``{}`` when it is not one."""
        try:
            data = _loads(response.content)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def _user(self, response: httpx.Response, what: str) -> User:
        user = self._json(response).get("user")
        if not isinstance(user, dict):
            # a 200 without a user is a broken answer (a proxy, a truncated body): try again
            raise self._error(TransientError, response, what, None, "no user in the answer")
        return User.from_api(user)

    def _success_body(self, response: httpx.Response, what: str) -> dict[str, Any]:
        if response.is_success:
            data = self._json(response)
            if not data:
                raise self._error(TransientError, response, what, None, "answer is not JSON")
            return data
        code, message = self._error_fields(response)
        self._raise_unless_final(response, what, code, message)
        raise self._error(RemoteError, response, what, code, message)

    def _error_fields(self, response: httpx.Response) -> tuple[str | None, str | None]:
        """``errorCode`` and a readable message; a non-JSON (CDN, HTML) body becomes text."""
        data = self._json(response)
        if data:
            code = data.get("errorCode")
            message = data.get("errorMessage") or data.get("errorDescription")
            return (
                str(code) if code else None,
                self._scrub(str(message)) if message else None,
            )
        return None, self._scrub(_excerpt(response.text)) or None

    def _raise_unless_final(
        self, response: httpx.Response, what: str, code: str | None, message: str | None
    ) -> None:
        """Raise for answers that are no final word on the call: 401/403, 429, 5xx."""
        status = response.status_code
        if status in (401, 403):
            raise self._fatal(response, what, code)
        if status == 429:
            raise RateLimitedError(
                f"{what}: HTTP 429 rate limited" + (f" ({code})" if code else ""),
                retry_after=_retry_after(response, self._json(response)),
                http_status=status,
                error_code=code,
                error_message=message,
            )
        if status >= 500 or status in _RETRY_4XX:
            raise self._error(TransientError, response, what, code, message)

    def _fatal(self, response: httpx.Response, what: str, code: str | None) -> FatalRemoteError:
        status = response.status_code
        cause = (
            "wrong management key or project id"
            if status == 401
            else "the management key lacks permission for user management"
        )
        return FatalRemoteError(
            f"{what}: HTTP {status}: {cause}", http_status=status, error_code=code
        )

    def _error(
        self,
        kind: type[E],
        response: httpx.Response,
        what: str,
        code: str | None,
        message: str | None,
    ) -> E:
        detail = ": ".join(part for part in (code, message) if part)
        return kind(
            f"{what}: HTTP {response.status_code}" + (f": {detail}" if detail else ""),
            http_status=response.status_code,
            error_code=code,
            error_message=message,
        )

    def _scrub(self, text: str) -> str:
        key = self._key.reveal()
        return text.replace(key, "********") if key in text else text


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, the errors it was raised from, and the members of exception groups among them
    (anyio and trio gather one error per address tried)."""
    seen: set[int] = set()
    stack = [exc]
    while stack and len(seen) < 64:
        error = stack.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        yield error
        if isinstance(error, BaseExceptionGroup):
            stack.extend(error.exceptions)
        cause = error.__cause__ or error.__context__
        if cause is not None:
            stack.append(cause)


def _excerpt(text: str) -> str:
    """The first 200 characters of readable text in a body that may be an HTML page."""
    text = _SCRIPT_OR_STYLE.sub(" ", text[:65536])
    text = html.unescape(_TAG.sub(" ", text))
    return _SPACE.sub(" ", text).strip()[:_EXCERPT]


def _retry_after(response: httpx.Response, data: dict[str, Any]) -> float:
    """Seconds to wait from ``Retry-After`` (seconds or HTTP date), the body, or 60."""
    header = response.headers.get("Retry-After")
    candidates: list[object] = [header, data.get("retryAfter"), data.get("Retry-After")]
    for value in candidates:
        seconds = _seconds(value)
        if seconds is not None:
            return seconds
    return _DEFAULT_RETRY_AFTER


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(text)
            except (TypeError, ValueError):
                return None
            seconds = when.timestamp() - time.time()
    # a date in the past or a zero says "now": still wait a second rather than hammer
    return max(seconds, 1.0) if seconds == seconds and seconds < 86400 else None
