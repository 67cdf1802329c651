"""What an answer of the management API says: a value, or the error to raise.

``Answers`` reads one ``httpx.Response`` as the client's endpoints need it: the JSON body, the
user in it, the error fields of a failure (a CDN's HTML page becomes a short text), and which
answers are no final word on a call (401/403 fatal, 429 rate limited, 5xx and 408 transient).
Every text taken from an answer is scrubbed of the management key, in case a proxy echoes the
request back. Nothing here sends anything (``remote.lanes`` does).
"""

from __future__ import annotations

import email.utils
import html
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import httpx

from batchphone.config import Secret
from batchphone.errors import FatalRemoteError, RateLimitedError, RemoteError, TransientError
from batchphone.logs import get_logger
from batchphone.models import ApiOutcome, Reason, Status, User

_loads: Callable[[bytes], Any] = json.loads
try:  # orjson is optional: a faster decoder when it is installed
    import orjson
except ImportError:  # pragma: no cover - depends on the environment
    pass
else:
    _loads = orjson.loads

__all__ = ["Answers", "PatchAnswer"]

E = TypeVar("E", bound=RemoteError)

log = get_logger()

_USER_NOT_FOUND: Final = "E112102"
_PHONE_CONFLICT: Final = "E062107"
_TIER = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_DEFAULT_RETRY_AFTER: Final = 60.0
# 408 is a 4xx that means "try again"; every 5xx is retried (the retry budget is bounded)
_RETRY_4XX: Final = frozenset({408})
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


class Answers:
    """Reads the answers of one project's calls; every text it keeps is scrubbed of ``key``."""

    def __init__(self, key: Secret) -> None:
        self._key = key

    def __repr__(self) -> str:
        return "Answers()"

    def scrub(self, text: str) -> str:
        """``text`` with the management key masked."""
        key = self._key.reveal()
        return text.replace(key, "********") if key in text else text

    def json(self, response: httpx.Response) -> dict[str, Any]:
        """The body as a JSON object, or ``{}`` when it is not one."""
        try:
            data = _loads(response.content)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def update_outcome(self, response: httpx.Response, what: str) -> ApiOutcome:
        """An update's answer as the row's final outcome (or the error it stands for)."""
        status = response.status_code
        if response.is_success:
            return ApiOutcome(Status.UPDATED, http_status=status, user=self.user(response, what))
        code, message = self.error_fields(response)
        self.raise_unless_final(response, what, code, message)
        if status == 404 or code == _USER_NOT_FOUND:
            reason, outcome = Reason.USER_NOT_FOUND, Status.NOT_FOUND
        elif status == 409 or code == _PHONE_CONFLICT:
            reason, outcome = Reason.PHONE_CONFLICT, Status.CONFLICT
        else:
            reason, outcome = Reason.REJECTED, Status.FAILED
        return ApiOutcome(outcome, reason, status, code, message)

    def user_or_none(self, response: httpx.Response, what: str) -> User | None:
        """The user of a read, or ``None`` when there is none (404, ``E112102``)."""
        if response.is_success:
            return self.user(response, what)
        code, message = self.error_fields(response)
        self.raise_unless_final(response, what, code, message)
        if response.status_code == 404 or code == _USER_NOT_FOUND:
            return None
        raise _error(RemoteError, response, what, code, message)

    def users_page(self, response: httpx.Response, what: str) -> tuple[list[User], int]:
        """A search's page of users and its total; entries that are not user objects are
        dropped (the page's length is the total's)."""
        data = self.success_body(response, what)
        users = data.get("users")
        if not isinstance(users, list):
            raise _error(TransientError, response, what, None, "no users list")
        total = data.get("total")
        found = [User.from_api(user) for user in users if isinstance(user, dict)]
        return found, total if isinstance(total, int) else len(users)

    def license_tier(self, response: httpx.Response) -> str | None:
        """The ``rateLimitTier`` of a license answer, or ``None`` (logged) when there is no
        usable one; 401/403 and 429 raise as for any call."""
        status = response.status_code
        if status in (401, 403):
            raise _fatal(response, "license", self.error_fields(response)[0])
        if status == 429:  # the caller's limiter pauses every call, as for any 429
            self.raise_unless_final(response, "license", *self.error_fields(response))
        tier = self.json(response).get("rateLimitTier") if response.is_success else None
        if not isinstance(tier, str) or not _TIER.fullmatch(tier):
            log.warning("license_unavailable", http_status=status)
            return None
        return tier

    def user(self, response: httpx.Response, what: str) -> User:
        """The ``user`` of a 200 (``TransientError`` when there is none)."""
        user = self.json(response).get("user")
        if not isinstance(user, dict):
            # a 200 without a user is a broken answer (a proxy, a truncated body): try again
            raise _error(TransientError, response, what, None, "no user in the answer")
        return User.from_api(user)

    def success_body(self, response: httpx.Response, what: str) -> dict[str, Any]:
        """The JSON body of a success; anything else raises the error it stands for."""
        if response.is_success:
            data = self.json(response)
            if not data:
                raise _error(TransientError, response, what, None, "answer is not JSON")
            return data
        code, message = self.error_fields(response)
        self.raise_unless_final(response, what, code, message)
        raise _error(RemoteError, response, what, code, message)

    def error_fields(self, response: httpx.Response) -> tuple[str | None, str | None]:
        """``errorCode`` and a readable message; a non-JSON (CDN, HTML) body becomes text."""
        data = self.json(response)
        if data:
            code = data.get("errorCode")
            message = data.get("errorMessage") or data.get("errorDescription")
            return (
                str(code) if code else None,
                self.scrub(str(message)) if message else None,
            )
        return None, self.scrub(_excerpt(response.text)) or None

    def raise_unless_final(
        self, response: httpx.Response, what: str, code: str | None, message: str | None
    ) -> None:
        """Raise for answers that are no final word on the call: 401/403, 429, 5xx."""
        status = response.status_code
        if status in (401, 403):
            raise _fatal(response, what, code)
        if status == 429:
            raise RateLimitedError(
                f"{what}: HTTP 429 rate limited" + (f" ({code})" if code else ""),
                retry_after=_retry_after(response, self.json(response)),
                http_status=status,
                error_code=code,
                error_message=message,
            )
        if status >= 500 or status in _RETRY_4XX:
            raise _error(TransientError, response, what, code, message)


def _fatal(response: httpx.Response, what: str, code: str | None) -> FatalRemoteError:
    """The error of a 401/403: no later call can succeed."""
    status = response.status_code
    cause = (
        "wrong management key or project id"
        if status == 401
        else "the management key lacks permission for user management"
    )
    return FatalRemoteError(f"{what}: HTTP {status}: {cause}", http_status=status, error_code=code)


def _error(
    kind: type[E],
    response: httpx.Response,
    what: str,
    code: str | None,
    message: str | None,
) -> E:
    """A ``kind`` error for ``response``: the status, the error code and the message."""
    detail = ": ".join(part for part in (code, message) if part)
    return kind(
        f"{what}: HTTP {response.status_code}" + (f": {detail}" if detail else ""),
        http_status=response.status_code,
        error_code=code,
        error_message=message,
    )


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
