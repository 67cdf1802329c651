"""An emulated project's users kept in a file between processes (``--emulator-state FILE``).

A rehearsal is several commands (plan, run, undo), each its own process with its own embedded
emulator; the state file carries the users from one to the next, so undo sees what run changed.
The file is JSON: ``{"format": "batchphone-emulator-state", "version": 1, "users": [...],
"seed": {"source": ..., "sha256": ...}}``, every user as the API returns it, and the seed the
users first came from (``sha256`` of ``seed_digest``; ``null`` when they came from the input),
so a later ``--emulator-users`` can be told the same seed from another one. A file without
``seed`` (written before it was recorded) still loads. It holds personal data: it is written
atomically, mode 0600.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from batchphone.emulator.users import SeedFileError, complete_user
from batchphone.files.atomic import write_private

__all__ = ["Seed", "State", "load_state", "read_state", "save_state", "seed_digest"]

_FORMAT = "batchphone-emulator-state"
_VERSION = 1


@dataclass(frozen=True, slots=True)
class Seed:
    """Where a state's users first came from: ``source`` in words, and ``sha256`` of the
    users (``seed_digest``), or ``None`` when they came from the input (no users file)."""

    source: str
    sha256: str | None


@dataclass(frozen=True, slots=True)
class State:
    """A state file's content: the users, and their seed (``None``: not recorded)."""

    users: list[dict[str, Any]]
    seed: Seed | None


def seed_digest(users: Sequence[dict[str, Any]]) -> str:
    """A fingerprint of seed users (complete, as ``load_users`` returns them): the same users
    give the same digest, whatever file and format they were read from."""
    return hashlib.sha256(orjson.dumps(list(users), option=orjson.OPT_SORT_KEYS)).hexdigest()


def read_state(path: Path) -> State:
    """The users and the seed saved in ``path``.

    ``OSError`` if unreadable, ``SeedFileError`` if not a state file.
    """
    try:
        document = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise SeedFileError(f"not a state file: not valid JSON ({exc})", path=str(path)) from None
    if not isinstance(document, dict) or document.get("format") != _FORMAT:
        raise SeedFileError(f"not a state file (no format {_FORMAT!r})", path=str(path))
    if document.get("version") != _VERSION:
        raise SeedFileError(f"state version {document.get('version')!r} is not {_VERSION}")
    users = document.get("users")
    if not isinstance(users, list) or not all(isinstance(u, dict) for u in users):
        raise SeedFileError("not a state file: users must be a list of objects", path=str(path))
    try:
        complete = [complete_user(user, position) for position, user in enumerate(users)]
    except ValueError as exc:
        raise SeedFileError(f"a saved user is damaged: {exc}", path=str(path)) from None
    return State(complete, _seed(document.get("seed")))


def _seed(value: Any) -> Seed | None:
    if not isinstance(value, dict) or not isinstance(value.get("source"), str):
        return None
    digest = value.get("sha256")
    return Seed(value["source"], digest if isinstance(digest, str) else None)


def load_state(path: Path) -> list[dict[str, Any]]:
    """The users saved in ``path``. ``OSError`` if unreadable, ``SeedFileError`` if not a state."""
    return read_state(path).users


def save_state(path: Path, users: Sequence[dict[str, Any]], seed: Seed | None = None) -> None:
    """Write ``users`` (and their ``seed``) to ``path`` atomically (temp file, fsync, rename),
    mode 0600."""
    document: dict[str, Any] = {"format": _FORMAT, "version": _VERSION, "users": list(users)}
    if seed is not None:
        document["seed"] = {"source": seed.source, "sha256": seed.sha256}
    data = orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"
    write_private(path, data)
