"""The read endpoints over one project's users: load one user, and search.

Each validates its query or body the way the API does, raises :class:`ApiError` for an error
answer, and returns the document of a 200 answer (the stored users, not copies).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from batchphone.emulator.contract import MAX_PAGE, ApiError, Code, field_of
from batchphone.emulator.store import UserStore

__all__ = ["load", "search"]

_SEARCH_SETS = ("loginIds", "userIds", "phones", "emails", "statuses", "tenantIds", "roleNames")


# -- GET /v1/mgmt/user ----------------------------------------------------------------------------


def load(store: UserStore, login_id: str | None, user_id: str | None) -> dict[str, Any]:
    """``{"user": ...}`` by ``loginId`` (or ``userId``) query parameter."""
    if login_id:
        user = store.by_login_id(login_id)
    elif user_id:
        user = store.by_user_id(user_id)
    else:
        raise ApiError(400, Code.MISSING_ARGUMENTS, "Missing arguments", "loginId is missing")
    if user is None:
        raise ApiError(404, Code.USER_NOT_FOUND, "User not found", "user not found")
    return {"user": user}


# -- POST /v2/mgmt/user/search --------------------------------------------------------------------


def search(store: UserStore, body: Mapping[str, Any]) -> dict[str, Any]:
    """``{"users": [...], "total": n}`` for the filters of the body, one page of them."""
    limit = field_of(body, "limit", int, "an integer") or MAX_PAGE
    page = field_of(body, "page", int, "an integer") or 0
    if not 0 < limit <= MAX_PAGE or page < 0:
        message = f"limit must be 0..{MAX_PAGE} and page 0 or more"
        raise ApiError(400, Code.INVALID_ARGUMENT, "Invalid argument", message)
    filters = {name: set(field_of(body, name, list, "a list") or ()) for name in _SEARCH_SETS}
    text = (field_of(body, "text", str, "a string") or "").lower()
    attributes = field_of(body, "customAttributes", dict, "an object") or {}
    only_test = bool(field_of(body, "testUsersOnly", bool, "a boolean"))
    with_test = only_test or bool(field_of(body, "withTestUser", bool, "a boolean"))
    candidates = store.candidates(filters["loginIds"], filters["userIds"], filters["phones"])

    def matches(user: dict[str, Any]) -> bool:
        checks = (
            (user["test"] if only_test else with_test or not user["test"]),
            not filters["loginIds"] or not filters["loginIds"].isdisjoint(user["loginIds"]),
            not filters["userIds"] or user["userId"] in filters["userIds"],
            not filters["phones"] or user["phone"] in filters["phones"],
            not filters["emails"] or user["email"] in filters["emails"],
            not filters["statuses"] or user["status"] in filters["statuses"],
            not filters["roleNames"] or not filters["roleNames"].isdisjoint(user["roleNames"]),
            not filters["tenantIds"]
            or any(t["tenantId"] in filters["tenantIds"] for t in user["userTenants"]),
            all(user["customAttributes"].get(k) == v for k, v in attributes.items()),
            not text or text in _search_text(user),
        )
        return all(checks)

    found = [user for user in candidates if matches(user)]
    return {"users": found[page * limit : (page + 1) * limit], "total": len(found)}


def _search_text(user: Mapping[str, Any]) -> str:
    """The text a free-text search looks in: login ids, name, email and phone, lower-cased."""
    return " ".join([*user["loginIds"], user["name"], user["email"], user["phone"]]).lower()
