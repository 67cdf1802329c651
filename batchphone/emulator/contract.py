"""What the emulated API promises: error codes, limits, error bodies, and every assumed choice.

Facts come from ``shared/docs/descope-api.md``. Where that file says **[assumed]** (or says
nothing), the emulator's behaviour is one entry of :data:`ASSUMED` below, and nowhere else:
docs/emulator.md lists the same keys, and a test keeps the two in step.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import orjson

__all__ = [
    "ABORT_EXTENSION",
    "ASSUMED",
    "COUNTED_PREFIXES",
    "E164",
    "LICENSE_TIERS",
    "MAX_BATCH",
    "MAX_PAGE",
    "USER_STATUSES",
    "ApiError",
    "Code",
    "error_body",
    "field_of",
    "malformed",
]


class Code:
    """Descope ``errorCode`` values the emulator answers with."""

    MALFORMED: Final = "E011001"  # fact
    MISSING_ARGUMENTS: Final = "E011002"  # fact
    INVALID_REQUEST: Final = "E011003"  # fact (used for a non-E.164 phone: assumed)
    INVALID_ARGUMENT: Final = "E011004"  # fact
    USER_NOT_FOUND: Final = "E112102"  # fact
    RATE_LIMITED: Final = "E130429"  # fact
    CONFLICT: Final = "E062107"  # assumed
    UNAUTHORIZED: Final = "E061103"  # assumed: the 401 code is not published
    NO_ROUTE: Final = "E000404"  # assumed
    SERVER_ERROR_PREFIX: Final = "E000"  # assumed: E000500, E000503, E000520, E000524


#: E.164: ``+``, a country code that does not start with 0, 7 to 15 digits in all.
E164: Final = re.compile(r"\+[1-9][0-9]{6,14}")
USER_STATUSES: Final = frozenset({"enabled", "disabled", "invited", "expired"})
LICENSE_TIERS: Final = ("tier1", "tier2", "tier3", "tier4")
#: Largest ``limit`` of a search and largest ``users`` list of a batch patch (both assumed).
MAX_PAGE: Final = 100
MAX_BATCH: Final = 100
#: Paths whose calls count against a project's budget (``/v1/mgmt/license`` does not).
COUNTED_PREFIXES: Final = ("/v1/mgmt/user", "/v2/mgmt/user")
#: ASGI scope extension through which a server or transport lets the app drop a connection.
ABORT_EXTENSION: Final = "batchphone.emulator.abort"

ASSUMED: Final[Mapping[str, str]] = {
    "auth-code": "A missing or wrong key, an unknown project, or an x-descope-project-id header "
    "that differs from the bearer's project: HTTP 401, errorCode E061103.",
    "auth-before-limit": "Only calls that pass auth count against the budget; a 401 costs nothing.",
    "counted-paths": "Every authenticated call under /v1/mgmt/user and /v2/mgmt/user counts (a "
    "batch patch is one call); /v1/mgmt/license, /_emulator/* and unknown paths do not.",
    "blocked-calls-count": "Calls answered 429 still count in the window: a client that keeps "
    "sending during a block is blocked again as soon as the block ends.",
    "block": "The call that exceeds N in the window starts a block of P seconds; calls during "
    "it get 429 and do not extend it. Retry-After is the whole seconds left, rounded up, at "
    "least 1.",
    "sliding-window": "Sliding: at most N calls in any interval (t-W, t]; a call exactly W "
    "seconds old no longer counts.",
    "fixed-window": "Fixed: windows [k*W, (k+1)*W) measured from the project's first counted call.",
    "phone-format": "A phone must match ^\\+[1-9][0-9]{6,14}$ (E.164, 7 to 15 digits), else "
    "HTTP 400 E011003. Seeded users may hold any phone, so legacy data can be rehearsed.",
    "null-booleans": "JSON null for verified or failOnConflict means false (proto3 default): an "
    "update without verified leaves the phone unverified, and one without failOnConflict "
    "merges.",
    "conflict": "A phone equal to another user's login id with failOnConflict true: HTTP 409, "
    "errorCode E062107, nothing changes.",
    "merge": "The same without failOnConflict: the other user is deleted (its login ids are not "
    "moved) and the update is applied; the stats record the merge.",
    "phone-not-unique": "Two users may share a phone that is no one's login id.",
    "patch-conflict": "A patch (single or batch) whose phone is another user's login id is "
    "refused with 409 E062107 (batch: a failedUsers entry); patches never merge.",
    "patch-fields": "A patch changes only the fields given; changing the phone does not touch "
    "verifiedPhone unless it is given; customAttributes replaces the whole map.",
    "type-errors": "A field of the wrong JSON type, or a body that is not a JSON object: 400 "
    "E011001, like malformed JSON.",
    "missing-login-id": "No loginId (or neither loginId nor userId on a load): 400 E011002.",
    "login-or-user-id": "loginId is looked up as a login id first, then as a user id.",
    "search-limit": "Search limit 0 means 100; a limit above 100 or a negative limit or page is "
    "refused with 400 E011004 rather than silently cut. Results come in creation order; sort "
    "is ignored. Test users are left out unless withTestUser or testUsersOnly.",
    "batch-limit": "A batch patch of more than 100 users is refused with 400 E011004; an empty "
    "one with 400 E011002. A failedUsers entry carries the user as stored, or only its loginIds "
    "when it does not exist.",
    "license-header": "x-descope-license is accepted and not checked.",
    "faults-scope": "Faults and their draw apply only to counted user calls, after auth and the "
    "limiter (a 429 is the CDN's answer and is never faulty); latency applies to every API call. "
    "writes_only limits the fault kinds to update/phone, patch and patch/batch (reads keep only "
    "the latency); write_latency holds each write's answer after the write is applied (not a "
    "401 or 429).",
    "fault-replay": "Each fault draw is a hash of the seed, the request (method, path, query, "
    "body) and how many times that same request was seen: a replay with the same seed and the "
    "same requests gets the same faults whatever the concurrency.",
    "server-errors": "500/503/520/524 faults answer a Descope-shaped JSON body (errorCode "
    "E000<status>); html_502 answers an HTML page from the CDN.",
    "drop": "drop: the connection closes before the call is applied; lost_answer: the call is "
    "applied, then the connection closes; timeout: the call is applied and its answer held "
    "for timeout_delay seconds (or until the client goes away), so a client with a shorter "
    "timeout sees an applied call answered too late.",
    "applied-faults": "applied_500, empty_200, empty_object_200: the call runs as usual (an "
    "update or each entry of a batch is applied; one the API refuses changes nothing), then its "
    "answer is replaced by a 500 with a JSON error body (E000500), a 200 with an empty body, or "
    "a 200 with {}.",
    "ignore-update": "ignore_update: an update or patch answers 200 with the user as it would "
    "be, but nothing changes. unapplied_200: nothing changes and the 200 shows it: the user "
    "(patchedUsers in a batch) as stored, with the old phone. An update the API refuses gets "
    "its error answer under both.",
    "stats-status": "In the stats, a call whose connection was closed has status 0.",
    "stats-updates": "updates counts applied writes (update/phone, patch, each batch entry) by "
    "the loginId the request named.",
    "seed-defaults": "A seeded user with an email or phone has it verified unless the file says "
    "otherwise; userId is derived from the first login id; createdTime defaults to "
    "1700000000 + its position.",
}


class ApiError(Exception):
    """An answer other than 200 that a handler decided on (the status and Descope's codes)."""

    def __init__(self, status: int, code: str, description: str, message: str = "") -> None:
        super().__init__(f"{status} {code} {description}")
        self.status = status
        self.code = code
        self.description = description
        self.message = message or description


def malformed(field: str, expected: str) -> ApiError:
    """The 400 of a field of the wrong JSON type (assumed ``type-errors``)."""
    return ApiError(400, Code.MALFORMED, f"{field} must be {expected}")


def field_of(body: Mapping[str, Any], field: str, kind: type | tuple[type, ...], name: str) -> Any:
    """``body[field]``, or ``None`` when absent or null; :func:`malformed` when it is not a
    ``kind`` (``name``: the type in words, "a string")."""
    value = body.get(field)
    if value is not None and not isinstance(value, kind):
        raise malformed(field, name)
    return value


def error_body(code: str, description: str, message: str = "") -> bytes:
    """A Descope-shaped error body: ``errorCode``, ``errorDescription``, ``errorMessage``."""
    document: dict[str, Any] = {
        "errorCode": code,
        "errorDescription": description,
        "errorMessage": message or description,
    }
    return orjson.dumps(document)
