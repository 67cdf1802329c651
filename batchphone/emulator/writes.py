"""The write endpoints over one project's users: update/phone, patch and patch/batch.

Each validates its body the way the API does, raises :class:`ApiError` for an error answer,
and returns the document of a 200 answer. ``apply=False`` answers the same but changes nothing
(the ``ignore_update`` fault).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from batchphone.emulator.contract import (
    E164,
    MAX_BATCH,
    USER_STATUSES,
    ApiError,
    Code,
    field_of,
    malformed,
)
from batchphone.emulator.store import UserStore

__all__ = ["patch", "patch_batch", "update_phone"]

_PATCH_TEXT = {"email": "email", "displayName": "name", "givenName": "givenName"}
_PATCH_TEXT |= {"middleName": "middleName", "familyName": "familyName", "picture": "picture"}
_PATCH_BOOL = ("verifiedEmail", "verifiedPhone")
_PATCH_LIST = ("roleNames", "ssoAppIds")


def _login_id(body: Mapping[str, Any]) -> str:
    login_id = field_of(body, "loginId", str, "a string")
    if not login_id:
        raise ApiError(400, Code.MISSING_ARGUMENTS, "Missing arguments", "loginId is missing")
    return str(login_id)


def _check_phone(phone: str) -> None:
    if phone and not E164.fullmatch(phone):
        raise ApiError(400, Code.INVALID_REQUEST, "Request is invalid", "phone is not E.164")


def _conflict(phone: str) -> ApiError:
    return ApiError(409, Code.CONFLICT, "User conflict", f"{phone} is another user's id")


# -- POST /v1/mgmt/user/update/phone ------------------------------------------------------------


def update_phone(
    store: UserStore, body: Mapping[str, Any], *, apply: bool = True
) -> dict[str, Any]:
    """Set (or, when empty or null, remove) a user's phone; ``{"user": ...}``."""
    login_id = field_of(body, "loginId", str, "a string")
    phone = field_of(body, "phone", str, "a string") or ""
    verified = field_of(body, "verified", bool, "a boolean")
    fail_on_conflict = field_of(body, "failOnConflict", bool, "a boolean")
    if not login_id:
        raise ApiError(400, Code.MISSING_ARGUMENTS, "Missing arguments", "loginId is missing")
    user = store.require(login_id)
    _check_phone(phone)
    other = store.conflicting(user, phone) if phone else None
    if other is not None and fail_on_conflict:
        raise _conflict(phone)
    if not apply:
        return {"user": {**user, "phone": phone, "verifiedPhone": bool(phone and verified)}}
    if other is not None:
        store.merge(login_id, other)
    store.set_phone(user, phone)
    user["verifiedPhone"] = bool(phone and verified)
    return {"user": user}


# -- PATCH /v1/mgmt/user/patch and /patch/batch -------------------------------------------------


def patch(store: UserStore, body: Mapping[str, Any], *, apply: bool = True) -> dict[str, Any]:
    """Change only the given fields of one user; ``{"user": ...}``."""
    user = store.require(_login_id(body))
    changes = _changes(body)
    phone = field_of(body, "phone", str, "a string")
    if phone is not None:
        _check_phone(phone)
        if phone and store.conflicting(user, phone) is not None:
            raise _conflict(phone)
    if not apply:
        return {"user": {**user, **changes, **({} if phone is None else {"phone": phone})}}
    user.update(changes)
    if phone is not None:
        store.set_phone(user, phone)
    return {"user": user}


def _changes(body: Mapping[str, Any]) -> dict[str, Any]:
    """The fields a patch gives, but the phone, by the user's key; checked."""
    changes: dict[str, Any] = {}
    for field, key in _PATCH_TEXT.items():
        if (value := field_of(body, field, str, "a string")) is not None:
            changes[key] = value
    for field in _PATCH_BOOL:
        if (value := field_of(body, field, bool, "a boolean")) is not None:
            changes[field] = value
    for field in _PATCH_LIST:
        if (value := field_of(body, field, list, "a list")) is not None:
            changes[field] = list(value)
    if (attributes := field_of(body, "customAttributes", dict, "an object")) is not None:
        changes["customAttributes"] = dict(attributes)
    if (tenants := field_of(body, "userTenants", list, "a list")) is not None:
        changes["userTenants"] = [_tenant(t) for t in tenants]
    if (status := field_of(body, "status", str, "a string")) is not None:
        if status not in USER_STATUSES:
            raise ApiError(400, Code.INVALID_ARGUMENT, "Invalid argument", "bad status")
        changes["status"] = status
    return changes


def _tenant(tenant: Any) -> dict[str, Any]:
    if not isinstance(tenant, dict) or not isinstance(tenant.get("tenantId"), str):
        raise malformed("userTenants", "a list of objects with tenantId")
    roles = tenant.get("roleNames") or []
    return {"tenantId": tenant["tenantId"], "roleNames": roles, "tenantName": "", "permissions": []}


def patch_batch(
    store: UserStore, body: Mapping[str, Any], *, apply: bool = True
) -> tuple[dict[str, Any], list[str]]:
    """Patch each entry of ``users``; failures come back inside the 200 document.

    Returns the document and the login ids of the entries patched.
    """
    entries = field_of(body, "users", list, "a list")
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
                raise malformed("users", "a list of objects")
            patched.append(copy.deepcopy(patch(store, entry, apply=apply)["user"]))
            applied.append(str(login_id))
        except ApiError as exc:
            found = store.find(login_id) if isinstance(login_id, str) else None
            shown = copy.deepcopy(found) if found else {"loginIds": [login_id]}
            failed.append({"failure": exc.message, "user": shown})
    return {"patchedUsers": patched, "failedUsers": failed, "additionalErrors": {}}, applied
