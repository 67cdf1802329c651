"""``--emulator`` / ``--emulator-state``: rehearse a command against the embedded emulator.

The emulator replaces the target and the credentials entirely (a fresh random key, a project id
that no real project has, and an in-process transport that opens no socket), so a rehearsal can
never reach a real project, even when ``DESCOPE_*`` variables are set.

Its users come from, in this order: the state file (``--emulator-state FILE``, when it exists),
``--emulator-users``, ``users.csv`` beside the input, or the input itself (every login id of the
input exists; for ``undo``, every user the run updated, with the phone the run set). With a
state file the users are written back when the command ends, so plan, run and undo, each in its
own process, see one project.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from batchphone.config import Endpoint, Secret
from batchphone.errors import InputError, UsageError

__all__ = ["EMULATOR_BASE_URL", "EMULATOR_PROJECT_ID", "Rehearsal", "embedded_target"]

#: A project id no real project has, so a rehearsal journal never resumes a real run.
EMULATOR_PROJECT_ID = "Pbatchphone0emulator0rehearsal00"
#: ``.invalid`` never resolves: were the in-process transport ever bypassed, nothing would leave.
EMULATOR_BASE_URL = "http://emulator.invalid"
_LATENCY_S = 0.02


@dataclass(frozen=True, slots=True)
class Rehearsal:
    """An embedded emulator ready for one command: its transport, target and users' origin."""

    transport_factory: Callable[[], httpx.AsyncBaseTransport]
    target: Endpoint = field(repr=False)
    #: how many users, and where they came from: ``"12 users from samples/users.csv"``
    origin: str
    users: int
    state_path: Path | None
    _users: Callable[[], list[dict[str, Any]]] = field(repr=False)

    def save(self) -> None:
        """Write the users back to the state file (if any): atomically, mode 0600."""
        if self.state_path is not None:
            from batchphone.emulator.statefile import save_state

            save_state(self.state_path, self._users())


def _users_from_input(
    input_path: Path,
    login_id_column: str,
    phone_column: str,
    sheet: str | None,
    delimiter: str | None = None,
) -> list[dict[str, Any]]:
    """One user per distinct login id of the input, with no phone: 'everyone exists'."""
    from batchphone.reader import InputSpec, open_input

    spec = InputSpec(
        path=input_path,
        login_id_column=login_id_column,
        phone_column=phone_column,
        sheet=sheet,
        delimiter=delimiter,
    )
    seen: dict[str, dict[str, Any]] = {}
    for rows in open_input(spec).batches():
        for row in rows:
            if row.login_id and row.login_id not in seen:
                seen[row.login_id] = {"loginId": row.login_id}
    return list(seen.values())


def _users_from_results(results_path: Path) -> list[dict[str, Any]]:
    """One user per row the run updated, with the phone the run set: what undo expects."""
    from batchphone.models import UpdateRequest
    from batchphone.reverse import open_results

    seen: dict[str, dict[str, Any]] = {}
    for items in open_results(results_path).prepared(allow_remove=True, limit=None):
        for item in items:
            if isinstance(item, UpdateRequest) and item.login_id not in seen:
                seen[item.login_id] = {"loginId": item.login_id, "phone": item.expect_phone or ""}
    return list(seen.values())


def _seed(
    input_path: Path,
    users_path: Path | Sequence[Mapping[str, Any]] | None,
    *,
    undo: bool,
    login_id_column: str,
    phone_column: str,
    sheet: str | None,
    delimiter: str | None = None,
) -> tuple[list[dict[str, Any]], str]:
    from batchphone.emulator import load_users

    if users_path is not None and not isinstance(users_path, Path):
        users = [dict(user) for user in users_path]
        return users, "given"
    if users_path is None and (input_path.parent / "users.csv").is_file():
        users_path = input_path.parent / "users.csv"
    if users_path is not None:
        try:
            users = load_users(users_path)
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"--emulator-users {users_path}: {exc}", setting="emulator_users"
            ) from None
        return users, f"from {users_path}"
    if undo:
        return _users_from_results(input_path), (
            "from the results' updated rows (each with the phone the run set)"
        )
    users = _users_from_input(input_path, login_id_column, phone_column, sheet, delimiter)
    return users, "from the input's login ids (every login id exists)"


def embedded_target(
    input_path: Path,
    users_path: Path | Sequence[Mapping[str, Any]] | None,
    *,
    state_path: Path | None = None,
    management_key: str | None = None,
    undo: bool = False,
    login_id_column: str = "loginId",
    phone_column: str = "phone",
    sheet: str | None = None,
    delimiter: str | None = None,
) -> Rehearsal:
    """An emulator for a command on ``input_path`` (``undo``: a result file), and its users.

    ``users_path`` is a users file or the users themselves (dicts, as ``load_users`` returns);
    ``management_key`` the key the emulator accepts (default: a fresh random one).
    Raises ``UsageError``/``InputError`` (exit 2, nothing sent) when the users cannot be had.
    """
    from batchphone.emulator import Emulator, Faults, ProjectSettings
    from batchphone.emulator.statefile import load_state

    if state_path is not None and state_path.exists():
        if users_path is not None:
            given = users_path if isinstance(users_path, Path) else "(the users given)"
            raise UsageError(
                f"--emulator-users {given}: the state file {state_path} already holds the "
                "users; drop --emulator-users, or delete the state file to seed it again",
                setting="emulator_users",
            )
        try:
            users = load_state(state_path)
        except (OSError, ValueError) as exc:
            message = f"--emulator-state {state_path}: {exc}"
            raise InputError(message, path=str(state_path)) from None
        where = f"from state {state_path}"
    else:
        users, where = _seed(
            input_path,
            users_path,
            undo=undo,
            login_id_column=login_id_column,
            phone_column=phone_column,
            sheet=sheet,
            delimiter=delimiter,
        )
    key = management_key or secrets.token_urlsafe(24)
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
    target = Endpoint(EMULATOR_PROJECT_ID, EMULATOR_BASE_URL, Secret(key))
    return Rehearsal(
        transport_factory=emulator.transport,
        target=target,
        origin=f"{len(users)} users {where}",
        users=len(users),
        state_path=state_path,
        _users=lambda: emulator.users(EMULATOR_PROJECT_ID),
    )
