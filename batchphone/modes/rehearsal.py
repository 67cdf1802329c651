"""``--emulator`` / ``--emulator-state``: rehearse a command against the embedded emulator.

The emulator replaces the target and the credentials entirely (a fresh random key, a project id
that no real project has, and an in-process transport that opens no socket), so a rehearsal can
never reach a real project, even when ``DESCOPE_*`` variables are set.

Its users come from, in this order: the state file (``--emulator-state FILE``, when it exists),
``--emulator-users``, ``users.csv`` beside the input, or the input itself (every login id of the
input exists; for ``undo``, every user the run updated, with the phone the run set). With a
state file the users are written back when the command ends, so plan, run and undo, each in its
own process, see one project; a command that fails before its first call leaves the file as it
was (or absent). The state file records the seed it was made from: ``--emulator-users`` naming
the same users is accepted, another seed is refused. One command at a time holds a state file
(``<state>.lock``); a second one is refused at once, naming the holder, rather than left to wait
for a run that may take minutes.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from batchphone.emulator import Emulator
    from batchphone.emulator.statefile import Seed

from batchphone.config import Endpoint, Secret
from batchphone.errors import BatchphoneError, InputError, OutputError, UsageError
from batchphone.files.lock import RunLock

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
    #: calls the emulated project received so far
    _calls: Callable[[], int] = field(repr=False)
    _seed: Seed | None = field(default=None, repr=False)
    _lock: RunLock | None = field(default=None, repr=False)

    @property
    def called(self) -> bool:
        """Whether any call reached the emulated project (only then can its users differ)."""
        return self._calls() > 0

    def save(self) -> None:
        """Write the users back to the state file (if any): atomically, mode 0600."""
        if self.state_path is not None:
            from batchphone.emulator.statefile import save_state

            save_state(self.state_path, self._users(), self._seed)

    def end(self, *, succeeded: bool) -> None:
        """The command is over: write the state file when it must, and release it.

        Written when a call reached the project (whatever the command's end: Ctrl-C, an error),
        or, after a command that succeeded, when the file does not exist yet. A command that
        failed before its first call leaves the file as it was, or absent. A write error
        raises ``BatchphoneError`` only after a success: else the first error is the one to
        report.
        """
        try:
            path = self.state_path
            if path is None or not (self.called or (succeeded and not path.exists())):
                return
            try:
                self.save()
            except OSError as exc:
                if succeeded:
                    raise BatchphoneError(
                        f"cannot write the emulator state {path}: {exc.strerror or exc}"
                    ) from None
        finally:
            if self._lock is not None:
                self._lock.release()


class _StateLock(RunLock):
    """The lock of a state file: one command at a time reads, changes and writes it."""

    def _busy(self, holder: str) -> None:
        state = self.path.with_name(self.path.name[: -len(".lock")])
        raise OutputError(
            f"emulator_state={state}: another batchphone command is using it "
            f"({holder or 'another process'}); one command at a time per state file: "
            "wait for it to end"
        )


def _users_from_input(
    input_path: Path,
    login_id_column: str,
    phone_column: str,
    sheet: str | None,
    delimiter: str | None = None,
) -> list[dict[str, Any]]:
    """One user per distinct login id of the input, with no phone: 'everyone exists'."""
    from batchphone.files.reader import InputSpec, open_input

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
    from batchphone.modes.reverse import open_results

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
) -> tuple[list[dict[str, Any]], str, Seed]:
    from batchphone.emulator.statefile import Seed, seed_digest

    if users_path is not None and not isinstance(users_path, Path):
        users = _given_users(users_path)
        return users, "given", Seed("the users given", seed_digest(users))
    beside = input_path.parent / "users.csv"
    # the input itself may be named users.csv: seeded from itself, every row would be unchanged
    if users_path is None and beside.is_file() and not _same_file(beside, input_path):
        users_path = beside
    if users_path is not None:
        users = _users_file(users_path)
        return users, f"from {users_path}", Seed(str(users_path), seed_digest(users))
    if undo:
        users = _users_from_results(input_path)
        where = "from the results' updated rows (each with the phone the run set)"
        return users, where, Seed("the results' updated rows", None)
    users = _users_from_input(input_path, login_id_column, phone_column, sheet, delimiter)
    where = "from the input's login ids (every login id exists)"
    return users, where, Seed("the input's login ids", None)


def _users_file(path: Path) -> list[dict[str, Any]]:
    from batchphone.emulator import load_users

    try:
        return load_users(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"emulator_users={path}: {exc}", setting="emulator_users") from None


def _given_users(users: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The users given as dicts, complete (as ``load_users`` makes them)."""
    from batchphone.emulator import complete_user

    try:
        return [complete_user(dict(user), position) for position, user in enumerate(users)]
    except ValueError as exc:
        raise UsageError(f"emulator users: {exc}", setting="emulator_users") from None


def _same_seed(
    seed: Seed | None, users_path: Path | Sequence[Mapping[str, Any]], state_path: Path
) -> None:
    """Refuse (``UsageError``) users to seed with that are not those the state was made from."""
    from batchphone.emulator.statefile import seed_digest

    if isinstance(users_path, Path):
        given, users = str(users_path), _users_file(users_path)
    else:
        given, users = "(the users given)", _given_users(users_path)
    if seed is not None and seed.sha256 is not None and seed.sha256 == seed_digest(users):
        return
    made_from = seed.source if seed is not None else "a seed it does not record"
    raise UsageError(
        f"emulator_users={given}: the state file {state_path} was made from another seed "
        f"({made_from}); drop emulator_users=..., or delete the state file to seed it again",
        setting="emulator_users",
    )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


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
    Raises ``UsageError``/``InputError`` (exit 2, nothing sent) when the users cannot be had,
    ``OutputError`` when another command holds the state file. With a state file, the
    rehearsal holds its lock until ``end()``.
    """
    lock = _StateLock(state_path) if state_path is not None else None
    if lock is not None:
        lock.acquire()
    try:
        seed: Seed | None
        if state_path is not None and state_path.exists():
            users, where, seed = _from_state(state_path, users_path)
        else:
            users, where, seed = _seed(
                input_path,
                users_path,
                undo=undo,
                login_id_column=login_id_column,
                phone_column=phone_column,
                sheet=sheet,
                delimiter=delimiter,
            )
        return _rehearsal(users, where, seed, state_path, lock, management_key=management_key)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _rehearsal(
    users: list[dict[str, Any]],
    where: str,
    seed: Seed | None,
    state_path: Path | None,
    lock: RunLock | None,
    *,
    management_key: str | None,
) -> Rehearsal:
    """An emulator with ``users`` (from ``where``), and the target that reaches it."""
    key = management_key or secrets.token_urlsafe(24)
    emulator = _emulator(users, key)
    # the state it names is part of the run's identity: one rehearsal never resumes another's
    emulated = str(state_path.resolve()) if state_path is not None else "memory"
    target = Endpoint(EMULATOR_PROJECT_ID, EMULATOR_BASE_URL, Secret(key), emulated=emulated)
    return Rehearsal(
        transport_factory=emulator.transport,
        target=target,
        origin=f"{len(users)} users {where}",
        users=len(users),
        state_path=state_path,
        _users=lambda: emulator.users(EMULATOR_PROJECT_ID),
        _calls=lambda: emulator.stats(EMULATOR_PROJECT_ID).total_requests,
        _seed=seed,
        _lock=lock,
    )


def _from_state(
    state_path: Path, users_path: Path | Sequence[Mapping[str, Any]] | None
) -> tuple[list[dict[str, Any]], str, Seed | None]:
    """The users of an existing state file, where they come from, and its seed; users to seed
    with are refused unless they are that seed."""
    from batchphone.emulator.statefile import read_state

    try:
        state = read_state(state_path)
    except (OSError, ValueError) as exc:
        message = f"emulator_state={state_path}: {exc}"
        raise InputError(message, path=str(state_path)) from None
    if users_path is not None:
        _same_seed(state.seed, users_path, state_path)
    return state.users, f"from state {state_path}", state.seed


def _emulator(users: list[dict[str, Any]], key: str) -> Emulator:
    """The emulator of a rehearsal: one project at the published budget, a little latency."""
    from batchphone.emulator import Emulator, Faults, ProjectSettings

    settings = ProjectSettings(
        project_id=EMULATOR_PROJECT_ID,
        management_key=key,
        rate_limit=500,
        rate_window=60.0,
        penalty=60.0,
        users=users,
    )
    return Emulator(projects=[settings], faults=Faults(latency=_LATENCY_S))
