"""Users as Descope returns them, and the seed files and generators that make them.

A seed is a list of plain dicts; :func:`complete_user` turns each into the full shape of a
Descope user (every field of descope-api.md, with its casing and type), so a test or a seed
file names only what it cares about.
"""

from __future__ import annotations

import base64
import copy
import csv
import hashlib
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from batchphone.cells import parse_flag
from batchphone.emulator.contract import USER_STATUSES
from batchphone.errors import InputError

__all__ = ["SeedFileError", "complete_user", "generate_users", "load_users", "user_id_for"]

#: createdTime of seeded users that do not give one: fixed, so runs are reproducible.
_BASE_CREATED = 1_700_000_000
_CSV_TEXT = frozenset(
    {"loginId", "userId", "phone", "email", "name", "givenName", "middleName", "familyName"}
    | {"status", "picture"}
)
_CSV_BOOL = frozenset({"verifiedPhone", "verifiedEmail", "test"})


class SeedFileError(InputError, ValueError):
    """A seed file cannot be turned into users (also a ``ValueError`` for plain callers)."""


def user_id_for(login_id: str) -> str:
    """A stable Descope-looking user id (``U`` + 27 characters) derived from a login id."""
    digest = hashlib.blake2b(login_id.encode(), digest_size=20).digest()
    return "U" + base64.b32encode(digest).decode().rstrip("=")[:27]


def complete_user(seed: Mapping[str, Any], position: int = 0) -> dict[str, Any]:
    """The full Descope user for ``seed`` (``loginId`` or ``loginIds`` required).

    Raises ``ValueError`` when the seed has no login id or a field of the wrong type.
    """
    login_ids = seed.get("loginIds")
    if login_ids is None and seed.get("loginId") is not None:
        login_ids = [seed["loginId"]]
    if not isinstance(login_ids, list) or not login_ids:
        raise ValueError("a user needs loginId or a non-empty loginIds list")
    if not all(isinstance(x, str) and x for x in login_ids):
        raise ValueError("every login id must be a non-empty string")
    email = seed.get("email") or ""
    phone = seed.get("phone") or ""
    user: dict[str, Any] = {
        "loginIds": list(login_ids),
        "userId": seed.get("userId") or user_id_for(login_ids[0]),
        "name": seed.get("name") or "",
        "email": email,
        "phone": phone,
        # real users who have a channel nearly always verified it; seeds may say otherwise
        "verifiedEmail": bool(email),
        "verifiedPhone": bool(phone),
        "roleNames": [],
        "userTenants": [],
        "status": "enabled",
        "externalIds": list(login_ids),
        "picture": "",
        "test": False,
        "customAttributes": {},
        "createdTime": _BASE_CREATED + position,
        "TOTP": False,
        "SAML": False,
        "OAuth": {},
        "webauthn": False,
        "password": False,
        "ssoAppIds": [],
        "givenName": "",
        "middleName": "",
        "familyName": "",
        "editable": True,
        "SCIM": False,
        "push": False,
        "permissions": [],
        "OIDC": False,
        "consentExpiration": 0,
    }
    for key, value in seed.items():
        if key in ("loginId", "loginIds") or value is None:
            continue
        if key in user and not isinstance(value, type(user[key])):
            expected = type(user[key]).__name__
            raise ValueError(f"{key} must be {expected}, not {type(value).__name__}")
        user[key] = copy.deepcopy(value)
    if user["status"] not in USER_STATUSES:
        raise ValueError(f"status {user['status']!r} is not one of {sorted(USER_STATUSES)}")
    return user


def load_users(path: str | Path) -> list[dict[str, Any]]:
    """Full users from a seed file: a JSON list of user objects, or a CSV with ``loginId``.

    CSV columns besides ``loginId`` are optional: ``phone``, ``email``, ``name``, ``userId``,
    ``givenName``, ``middleName``, ``familyName``, ``status``, ``picture`` and the booleans
    ``verifiedPhone``, ``verifiedEmail``, ``test``; others are refused so a typo is not lost.
    Raises ``OSError`` when the file cannot be read and :class:`SeedFileError` when its content
    is wrong (with the line or item that is).
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json" or text.lstrip().startswith("["):
        seeds, where = _json_seeds(text, path), "item"
    else:
        seeds, where = _csv_seeds(text, path), "line"
    users: list[dict[str, Any]] = []
    owner: dict[str, int] = {}
    for number, seed in seeds:
        try:
            user = complete_user(seed, position=len(users))
        except ValueError as exc:
            raise SeedFileError(f"{where} {number}: {exc}", path=str(path), row=number) from None
        for key in (*user["loginIds"], user["userId"]):
            if key in owner:
                message = f"{where} {number}: {key!r} is already used by {where} {owner[key]}"
                raise SeedFileError(message, path=str(path), row=number)
            owner[key] = number
        users.append(user)
    return users


def _json_seeds(text: str, path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise SeedFileError(f"not valid JSON: {exc}", path=str(path)) from None
    if not isinstance(document, list):
        raise SeedFileError("a JSON seed file must hold a list of users", path=str(path))
    for number, item in enumerate(document, start=1):
        if not isinstance(item, dict):
            raise SeedFileError(f"item {number}: not a JSON object", path=str(path), row=number)
        yield number, item


def _csv_seeds(text: str, path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(text.splitlines())
    columns = reader.fieldnames or []
    if "loginId" not in columns:
        raise SeedFileError("a CSV seed file needs a loginId column", path=str(path))
    unknown = sorted(set(columns) - _CSV_TEXT - _CSV_BOOL)
    if unknown:
        raise SeedFileError(f"unknown column(s): {', '.join(unknown)}", path=str(path))
    for record in reader:
        line = reader.line_num
        seed: dict[str, Any] = {}
        for column, cell in record.items():
            if column is None:
                raise SeedFileError(f"line {line}: more cells than columns", path=str(path))
            value = (cell or "").strip()
            if column in _CSV_BOOL:
                flag = parse_flag(value)
                if value and flag is None:
                    message = f"line {line}: {column} must be true or false, not {value!r}"
                    raise SeedFileError(message, path=str(path), row=line)
                if flag is not None:
                    seed[column] = flag
            elif value:
                seed[column] = value
        if "loginId" not in seed:
            raise SeedFileError(f"line {line}: empty loginId", path=str(path), row=line)
        yield line, seed


def generate_users(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` users ``user0@example.com`` .. deterministic under ``seed``.

    About half have a verified US phone in the 555-01xx range; names and phones depend only
    on ``seed``, so a benchmark can be rerun against the same population.
    """
    if count < 0:
        raise ValueError("the number of users to generate must be 0 or more")
    rng = random.Random(seed)
    users = []
    for i in range(count):
        login_id = f"user{i}@example.com"
        seed_user: dict[str, Any] = {"loginId": login_id, "email": login_id, "name": f"User {i}"}
        if rng.random() < 0.5:
            seed_user["phone"] = f"+1{rng.randrange(200, 1000)}55501{rng.randrange(100):02d}"
        users.append(complete_user(seed_user, position=i))
    return users
