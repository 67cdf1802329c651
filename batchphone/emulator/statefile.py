"""An emulated project's users kept in a file between processes (``--emulator-state FILE``).

A rehearsal is several commands (plan, run, undo), each its own process with its own embedded
emulator; the state file carries the users from one to the next, so undo sees what run changed.
The file is JSON: ``{"format": "batchphone-emulator-state", "version": 1, "users": [...]}``,
every user as the API returns it. It holds personal data: it is written atomically, mode 0600.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from batchphone.atomic import write_private
from batchphone.emulator.users import SeedFileError, complete_user

__all__ = ["load_state", "save_state"]

_FORMAT = "batchphone-emulator-state"
_VERSION = 1


def load_state(path: Path) -> list[dict[str, Any]]:
    """The users saved in ``path``. ``OSError`` if unreadable, ``SeedFileError`` if not a state."""
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
        return [complete_user(user, position) for position, user in enumerate(users)]
    except ValueError as exc:
        raise SeedFileError(f"a saved user is damaged: {exc}", path=str(path)) from None


def save_state(path: Path, users: Sequence[dict[str, Any]]) -> None:
    """Write ``users`` to ``path`` atomically (temp file, fsync, rename), mode 0600."""
    document = {"format": _FORMAT, "version": _VERSION, "users": list(users)}
    data = orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"
    write_private(path, data)
