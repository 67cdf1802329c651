"""``run --emulator``: rehearse a run against the embedded emulator, in-process.

The emulator replaces the target and the credentials entirely (a fresh random key, a project id
that no real project has, and an in-process transport that opens no socket), so a rehearsal can
never reach a real project, even when ``DESCOPE_*`` variables are set.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from batchphone.errors import UsageError

__all__ = ["EMULATOR_BASE_URL", "EMULATOR_PROJECT_ID", "embedded_target"]

#: A project id no real project has, so a rehearsal journal never resumes a real run.
EMULATOR_PROJECT_ID = "Pbatchphone0emulator0rehearsal00"
#: ``.invalid`` never resolves: were the in-process transport ever bypassed, nothing would leave.
EMULATOR_BASE_URL = "http://emulator.invalid"
_LATENCY_S = 0.02


def _users_from_input(input_path: Path) -> list[dict[str, Any]]:
    """One user per distinct login id of the input, with no phone: 'everyone exists'."""
    from batchphone.reader import InputSpec, open_input

    source = open_input(InputSpec(path=input_path))
    seen: dict[str, dict[str, Any]] = {}
    for rows in source.batches():
        for row in rows:
            if row.login_id and row.login_id not in seen:
                seen[row.login_id] = {"loginId": row.login_id}
    return list(seen.values())


def embedded_target(
    input_path: Path, users_path: Path | None
) -> tuple[Callable[[], httpx.AsyncBaseTransport], dict[str, Any]]:
    """An emulator seeded for ``input_path``: its transport factory and its target.

    Users come from ``users_path``, else from ``users.csv`` beside the input, else one user per
    login id of the input (so a rehearsal of your own file shows what would happen if every
    user exists).
    """
    from batchphone.emulator import Emulator, Faults, ProjectSettings, load_users

    if users_path is None and (input_path.parent / "users.csv").is_file():
        users_path = input_path.parent / "users.csv"
    if users_path is not None:
        try:
            users = load_users(users_path)
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"--emulator-users {users_path}: {exc}", setting="emulator_users"
            ) from None
    else:
        users = _users_from_input(input_path)
    key = secrets.token_urlsafe(24)
    emulator = Emulator(
        projects=[
            ProjectSettings(
                project_id=EMULATOR_PROJECT_ID,
                management_key=key,
                rate_limit=500,
                rate_window=60.0,
                penalty=60.0,
                users=users,
            )
        ],
        faults=Faults(latency=_LATENCY_S),
    )
    target = {
        "project_id": EMULATOR_PROJECT_ID,
        "base_url": EMULATOR_BASE_URL,
        "management_key": key,
    }
    return emulator.transport, target
