"""One project's users and the operations of the user endpoints, free of HTTP.

Each operation validates its body the way the API does, raises :class:`ApiError` for an
error answer, and returns the document of a 200 answer. Lookups by login id, user id and phone
go through indexes, so an update costs the same with ten users or a million.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from batchphone.emulator.contract import E164, MAX_BATCH, MAX_PAGE, USER_STATUSES, ApiError, Code
from batchphone.emulator.users import complete_user

__all__ = ["Merge", "UserStore"]

_PATCH_TEXT = {"email": "email", "displayName": "name", "givenName": "givenName"}
_PATCH_TEXT |= {"middleName": "middleName", "familyName": "familyName", "picture": "picture"}
_PATCH_BOOL = ("verifiedEmail", "verifiedPhone")
_PATCH_LIST = ("roleNames", "ssoAppIds")
_SEARCH_SETS = ("loginIds", "userIds", "phones", "emails", "statuses", "tenantIds", "roleNames")


@dataclass(frozen=True, slots=True)
class Merge:
    """A merge the API did because ``failOnConflict`` was not true: ``deleted`` is gone."""

    login_id: str
    deleted: str


def _malformed(field: str, expected: str) -> ApiError:
    return ApiError(400, Code.MALFORMED, f"{field} must be {expected}")


def _get(body: Mapping[str, Any], field: str, kind: type | tuple[type, ...], name: str) -> Any:
    value = body.get(field)
    if value is not None and not isinstance(value, kind):
        raise _malformed(field, name)
    return value


class UserStore:
    """The users of one project, indexed by login id, user id and phone."""

    def __init__(self, users: Iterable[Mapping[str, Any]]) -> None:
        """Index ``users`` (full or partial user dicts; ``ValueError`` if one is wrong)."""
        self._by_id: dict[str, dict[str, Any]] = {}  # insertion order = creation order
        self._by_login: dict[str, str] = {}
        self._by_phone: dict[str, set[str]] = {}
        self._order: dict[str, int] = {}
        self._sequence = itertools.count()
        self.merges: list[Merge] = []
        for position, user in enumerate(users):
            # complete_user copies, and fills what a partial seed leaves out
            self._add(complete_user(user, position))

    def __len__(self) -> int:
        return len(self._by_id)

    def _add(self, user: dict[str, Any]) -> None:
        user_id = user["userId"]
        if user_id in self._by_id:
            raise ValueError(f"user id {user_id!r} appears twice")
        for login_id in user["loginIds"]:
            if login_id in self._by_login:
                raise ValueError(f"login id {login_id!r} appears twice")
            self._by_login[login_id] = user_id
        self._by_id[user_id] = user
        self._order[user_id] = next(self._sequence)
        self._index_phone(user, add=True)

    def _index_phone(self, user: dict[str, Any], *, add: bool) -> None:
        if not user["phone"]:
            return
        holders = self._by_phone.setdefault(user["phone"], set())
        if add:
            holders.add(user["userId"])
        else:
            holders.discard(user["userId"])
            if not holders:
                del self._by_phone[user["phone"]]

    def users(self) -> list[dict[str, Any]]:
        """Every stored user (not copies), in creation order."""
        return sorted(self._by_id.values(), key=lambda user: self._order[user["userId"]])

    def find(self, login_or_user_id: str) -> dict[str, Any] | None:
        """The stored user (not a copy) whose login id, else user id, this is."""
        user_id = self._by_login.get(login_or_user_id, login_or_user_id)
        return self._by_id.get(user_id)

    def _require(self, login_id: str) -> dict[str, Any]:
        user = self.find(login_id)
        if user is None:
            raise ApiError(404, Code.USER_NOT_FOUND, "User not found", f"{login_id} not found")
        return user

    def _set_phone(self, user: dict[str, Any], phone: str) -> None:
        self._index_phone(user, add=False)
        user["phone"] = phone
        self._index_phone(user, add=True)

    def _delete(self, user: dict[str, Any]) -> None:
        self._index_phone(user, add=False)
        for login_id in user["loginIds"]:
            del self._by_login[login_id]
        del self._by_id[user["userId"]]
        del self._order[user["userId"]]

    def _conflicting(self, user: dict[str, Any], phone: str) -> dict[str, Any] | None:
        other_id = self._by_login.get(phone)
        return None if other_id is None or other_id == user["userId"] else self._by_id[other_id]

    @staticmethod
    def _check_phone(phone: str) -> None:
        if phone and not E164.fullmatch(phone):
            raise ApiError(400, Code.INVALID_REQUEST, "Request is invalid", "phone is not E.164")

    # -- POST /v1/mgmt/user/update/phone ------------------------------------------------------

    def update_phone(self, body: Mapping[str, Any], *, apply: bool = True) -> dict[str, Any]:
        """Set (or, when empty or null, remove) a user's phone; ``{"user": ...}``.

        ``apply=False`` answers the same but changes nothing (the ``ignore_update`` fault).
        """
        login_id = _get(body, "loginId", str, "a string")
        phone = _get(body, "phone", str, "a string") or ""
        verified = _get(body, "verified", bool, "a boolean")
        fail_on_conflict = _get(body, "failOnConflict", bool, "a boolean")
        if not login_id:
            raise ApiError(400, Code.MISSING_ARGUMENTS, "Missing arguments", "loginId is missing")
        user = self._require(login_id)
        self._check_phone(phone)
        other = self._conflicting(user, phone) if phone else None
        if other is not None and fail_on_conflict:
            raise ApiError(409, Code.CONFLICT, "User conflict", f"{phone} is another user's id")
        if not apply:
            return {"user": {**user, "phone": phone, "verifiedPhone": bool(phone and verified)}}
        if other is not None:
            self.merges.append(Merge(login_id=login_id, deleted=other["loginIds"][0]))
            self._delete(other)
        self._set_phone(user, phone)
        user["verifiedPhone"] = bool(phone and verified)
        return {"user": user}

    # -- GET /v1/mgmt/user --------------------------------------------------------------------

    def load(self, login_id: str | None, user_id: str | None) -> dict[str, Any]:
        """``{"user": ...}`` by ``loginId`` (or ``userId``) query parameter."""
        if login_id:
            user = self._by_id.get(self._by_login.get(login_id, ""))
        elif user_id:
            user = self._by_id.get(user_id)
        else:
            raise ApiError(400, Code.MISSING_ARGUMENTS, "Missing arguments", "loginId is missing")
        if user is None:
            raise ApiError(404, Code.USER_NOT_FOUND, "User not found", "user not found")
        return {"user": user}

    # -- PATCH /v1/mgmt/user/patch and /patch/batch --------------------------------------------

    def patch(self, body: Mapping[str, Any], *, apply: bool = True) -> dict[str, Any]:
        """Change only the given fields of one user; ``{"user": ...}``."""
        login_id = _get(body, "loginId", str, "a string")
        if not login_id:
            raise ApiError(400, Code.MISSING_ARGUMENTS, "Missing arguments", "loginId is missing")
        user = self._require(login_id)
        changes: dict[str, Any] = {}
        for field, key in _PATCH_TEXT.items():
            if (value := _get(body, field, str, "a string")) is not None:
                changes[key] = value
        for field in _PATCH_BOOL:
            if (value := _get(body, field, bool, "a boolean")) is not None:
                changes[field] = value
        for field in _PATCH_LIST:
            if (value := _get(body, field, list, "a list")) is not None:
                changes[field] = list(value)
        if (attributes := _get(body, "customAttributes", dict, "an object")) is not None:
            changes["customAttributes"] = dict(attributes)
        if (tenants := _get(body, "userTenants", list, "a list")) is not None:
            changes["userTenants"] = [self._tenant(t) for t in tenants]
        if (status := _get(body, "status", str, "a string")) is not None:
            if status not in USER_STATUSES:
                raise ApiError(400, Code.INVALID_ARGUMENT, "Invalid argument", "bad status")
            changes["status"] = status
        phone = _get(body, "phone", str, "a string")
        if phone is not None:
            self._check_phone(phone)
            if phone and self._conflicting(user, phone) is not None:
                raise ApiError(409, Code.CONFLICT, "User conflict", f"{phone} is another user's id")
        if not apply:
            return {"user": {**user, **changes, **({} if phone is None else {"phone": phone})}}
        user.update(changes)
        if phone is not None:
            self._set_phone(user, phone)
        return {"user": user}

    @staticmethod
    def _tenant(tenant: Any) -> dict[str, Any]:
        if not isinstance(tenant, dict) or not isinstance(tenant.get("tenantId"), str):
            raise _malformed("userTenants", "a list of objects with tenantId")
        roles = tenant.get("roleNames") or []
        return {
            "tenantId": tenant["tenantId"],
            "roleNames": roles,
            "tenantName": "",
            "permissions": [],
        }

    def patch_batch(
        self, body: Mapping[str, Any], *, apply: bool = True
    ) -> tuple[dict[str, Any], list[str]]:
        """Patch each entry of ``users``; failures come back inside the 200 document.

        Returns the document and the login ids of the entries patched.
        """
        entries = _get(body, "users", list, "a list")
        if not entries:
            raise ApiError(400, Code.MISSING_ARGUMENTS, "Missing arguments", "users is empty")
        if len(entries) > MAX_BATCH:
            message = f"at most {MAX_BATCH} users per batch"
            raise ApiError(400, Code.INVALID_ARGUMENT, "Invalid argument", message)
        patched: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        applied: list[str] = []
        for entry in entries:
            login_id = entry.get("loginId") if isinstance(entry, dict) else None
            try:
                if not isinstance(entry, dict):
                    raise _malformed("users", "a list of objects")
                patched.append(copy.deepcopy(self.patch(entry, apply=apply)["user"]))
                applied.append(str(login_id))
            except ApiError as exc:
                found = self.find(login_id) if isinstance(login_id, str) else None
                shown = copy.deepcopy(found) if found else {"loginIds": [login_id]}
                failed.append({"failure": exc.message, "user": shown})
        return {"patchedUsers": patched, "failedUsers": failed, "additionalErrors": {}}, applied

    # -- POST /v2/mgmt/user/search --------------------------------------------------------------

    def search(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``{"users": [...], "total": n}`` for the filters of the body, one page of them."""
        limit = _get(body, "limit", int, "an integer") or MAX_PAGE
        page = _get(body, "page", int, "an integer") or 0
        if not 0 < limit <= MAX_PAGE or page < 0:
            message = f"limit must be 0..{MAX_PAGE} and page 0 or more"
            raise ApiError(400, Code.INVALID_ARGUMENT, "Invalid argument", message)
        filters = {name: set(_get(body, name, list, "a list") or ()) for name in _SEARCH_SETS}
        text = (_get(body, "text", str, "a string") or "").lower()
        attributes = _get(body, "customAttributes", dict, "an object") or {}
        only_test = bool(_get(body, "testUsersOnly", bool, "a boolean"))
        with_test = only_test or bool(_get(body, "withTestUser", bool, "a boolean"))
        candidates = self._candidates(filters)

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

    def _candidates(self, filters: Mapping[str, set[Any]]) -> list[dict[str, Any]]:
        """Users that may match: from an index when a filter allows it, else everyone."""
        ids: set[str] | None = None
        if filters["loginIds"]:
            ids = {self._by_login[x] for x in filters["loginIds"] if x in self._by_login}
        elif filters["userIds"]:
            ids = {x for x in filters["userIds"] if x in self._by_id}
        elif filters["phones"]:
            ids = set().union(*(self._by_phone.get(p, ()) for p in filters["phones"]))
        if ids is None:
            return list(self._by_id.values())
        # creation order, without scanning everyone
        return [self._by_id[i] for i in sorted(ids, key=self._order.__getitem__)]


def _search_text(user: Mapping[str, Any]) -> str:
    """The text a free-text search looks in: login ids, name, email and phone, lower-cased."""
    return " ".join([*user["loginIds"], user["name"], user["email"], user["phone"]]).lower()
