"""Descope's management API: one call in, a domain result out.

The client knows no files, no rows and no rate: it sends one call and says what the answer
means. A final answer for a row is an ``ApiOutcome``; anything worth another try raises
``TransientError``, a 429 raises ``RateLimitedError`` (the limiter pauses everyone), and an
answer no later call can change (401, 403) raises ``FatalRemoteError``. A call that cannot
connect before any call of this client has raises ``UnreachableError`` (``remote.lanes``).

The HTTP (keep-alive lanes, what a failed send means) is ``remote.lanes``; reading an answer
(its body, its error fields, which statuses are final) is ``remote.answers``. The management
key lives in the ``Authorization`` header (httpx masks it in reprs) and in a ``Secret``; error
messages are built from status codes and response bodies, scrubbed of the key in case a proxy
echoes the request back.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from types import TracebackType
from typing import Final, Self, TypedDict

import httpx

from batchphone.config import Secret
from batchphone.errors import TransientError
from batchphone.logs import get_logger
from batchphone.models import ApiOutcome, UpdateRequest, User
from batchphone.remote.answers import Answers, PatchAnswer
from batchphone.remote.lanes import Lanes
from batchphone.version import __version__

__all__ = ["DEFAULT_BASE_URL", "DescopeClient", "UserPatch", "derive_base_url"]


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


def derive_base_url(project_id: str) -> str:
    """The API base URL for a project, as the official SDKs derive it.

    A project id of 32+ characters carries its region in characters 1..4
    (``Puse1...`` -> ``https://api.use1.descope.com``); shorter ids use the default.
    """
    if len(project_id) >= 32:
        return f"https://api.{project_id[1:5]}.descope.com"
    return DEFAULT_BASE_URL


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
        self._answers = answers = Answers(management_key)
        # the headers the official Python SDK sends, with batchphone's own name and version
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"batchphone/{__version__}",
            "x-descope-project-id": project_id,
            "x-descope-sdk-name": "batchphone",
            "x-descope-sdk-python-version": platform.python_version(),
            "x-descope-sdk-version": __version__,
        }
        self.lanes = Lanes(
            self.base_url,
            project_id=project_id,
            management_key=management_key,
            headers=headers,
            timeout=timeout,
            transport=transport,
            scrub=answers.scrub,
        )

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
        await self.lanes.aclose()

    # -- endpoints -----------------------------------------------------------------------
    async def fetch_license(self) -> str | None:
        """Ask for the project's rate-limit tier and send it as ``x-descope-license`` from now on.

        The SDKs do this so the CDN applies the right budget. Only 401/403 (the key is wrong, so
        every later call would fail too) and ``UnreachableError`` (nothing listens there) are
        fatal; a 429 raises ``RateLimitedError`` like every other call's; any other failure
        leaves the tier unset.
        """
        try:
            response = await self.lanes.send("GET", LICENSE_PATH, what="license")
        except TransientError as exc:
            log.warning("license_unavailable", error=exc.message)
            return None
        tier = self._answers.license_tier(response)
        if tier is None:
            return None
        self.license = tier
        self.lanes.set_header("x-descope-license", tier)
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
        response = await self.lanes.send("POST", UPDATE_PHONE_PATH, body=body, what="update phone")
        return self._answers.update_outcome(response, "update phone")

    async def load_user(self, login_id: str) -> User | None:
        """``GET /v1/mgmt/user?loginId=``: the user, or ``None`` when there is none."""
        response = await self.lanes.send(
            "GET", LOAD_USER_PATH, params={"loginId": login_id}, what="load user"
        )
        return self._answers.user_or_none(response, "load user")

    async def search_users(
        self, login_ids: Sequence[str], *, page: int = 0, limit: int = 100
    ) -> tuple[list[User], int]:
        """``POST /v2/mgmt/user/search`` by login ids: one page of users and the total.

        Entries that are not user objects are dropped (the page's length is the total's).
        """
        # withTestUser: a login id named explicitly must be found even if it is a test user
        body = {"loginIds": list(login_ids), "page": page, "limit": limit, "withTestUser": True}
        response = await self.lanes.send("POST", SEARCH_PATH, body=body, what="search users")
        return self._answers.users_page(response, "search users")

    async def patch_batch(self, users: Sequence[UserPatch]) -> PatchAnswer:
        """``PATCH /v1/mgmt/user/patch/batch``: the users patched and the users it failed.

        Per-user failures come back inside a 200 (``failedUsers``); the caller reads them.
        """
        body = {"users": list(users)}
        response = await self.lanes.send("PATCH", PATCH_BATCH_PATH, body=body, what="patch batch")
        return PatchAnswer.from_api(self._answers.success_body(response, "patch batch"))
