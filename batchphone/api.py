"""The public API: ``run``, ``validate``, ``plan`` and ``undo`` on a ``Target``, each a ``Summary``.

Each function is one CLI command. Every option of that command that describes the job is a
keyword argument of the same name (``--no-lookup`` -> ``no_lookup=True``, ``--rate 500/60`` ->
``rate="500/60"``); the rest map as ``OTHER_OPTIONS`` says (the project and the emulator are the
``target``; the output options are the CLI's own). The keywords are written out here, so that a
typo stays a ``TypeError`` and type checkers see them; each is the option of that name in
``options.OPTIONS``, with its type and a ``None`` default (tests/test_options.py checks every
signature against that declaration). Keywords are checked with the parsers ``load_settings``
uses: a bad value raises ``UsageError`` before any call. Errors are ``batchphone.errors``
classes, never an ``ExceptionGroup``; they name options as keywords (``restart=True``).

A library call is quiet and explicit: it reads no ``config.toml`` and no ``BATCHPHONE_*`` (pass
``settings=batchphone.load_settings()`` for that), installs no signal handler unless
``handle_signals=True``, configures no logging and prints nothing (see ``batchphone.logs``).

Heavy modules (polars, httpx, the pipeline, even ``secrets``) are imported
when a function is called, so that importing ``batchphone`` (and ``--help``) stays fast.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchphone.config import (
    Endpoint,
    Secret,
    Settings,
    check_key,
    check_plain_http,
    parse_options,
)
from batchphone.errors import UsageError
from batchphone.models import Command, Summary
from batchphone.options import OPTIONS, BudgetStore, Goes, _text, _url

if TYPE_CHECKING:
    from batchphone.modes.rehearsal import Rehearsal
    from batchphone.progress import Progress

__all__ = ["OTHER_OPTIONS", "Target", "plan", "run", "undo", "validate"]

PathLike = str | os.PathLike[str]

#: CLI options that are not keywords of the functions, and where each one went.
OTHER_OPTIONS: Mapping[str, str] = {o.name: o.library for o in OPTIONS if o.library}

#: Keywords that describe the job (``Job``) rather than settings.
_JOB_OPTIONS = tuple(option for option in OPTIONS if option.goes is Goes.JOB)


class _Embedded:
    """The emulator behind ``Target.emulator()``: seeded on first use, kept for later calls.

    One ``Target.emulator()`` is one project: a ``plan``, ``run`` and ``undo`` made with it see
    each other's changes. With ``state`` the users are also read from and written to that file,
    as ``--emulator-state`` does across processes: each command opens the file anew (under its
    lock) and writes it back when it ends (``close``).
    """

    def __init__(
        self, users: Path | Sequence[Mapping[str, Any]] | None, state: Path | None, key: str
    ) -> None:
        self.users = users
        self.state = state
        self.key = key
        self._rehearsal: Rehearsal | None = None
        self._lock = threading.Lock()

    def open(self, input_path: Path, command: Command, settings: Settings) -> Rehearsal:
        from batchphone.logs import get_logger
        from batchphone.modes.rehearsal import embedded_target

        with self._lock:
            if self._rehearsal is None:
                self._rehearsal = seeded = embedded_target(
                    input_path,
                    self.users,
                    state_path=self.state,
                    management_key=self.key,
                    undo=command is Command.UNDO,
                    login_id_column=settings.login_id_column,
                    phone_column=settings.phone_column,
                    sheet=settings.sheet,
                    delimiter=settings.delimiter,
                )
                # once per emulated project, when it is seeded: a typo'd login id that shows
                # `change` instead of `not_found` is then no surprise
                get_logger().info("emulator_users", users=seeded.users, origin=seeded.origin)
            return self._rehearsal

    def close(self, *, succeeded: bool) -> None:
        """The command that opened the project ended: write the state file as it must be
        (``Rehearsal.end``) and let it go, so the next command reads it again."""
        with self._lock:
            found = self._rehearsal
            if found is None or found.state_path is None:
                return  # in memory: the users live on in this object
            self._rehearsal = None
            found.end(succeeded=succeeded)


@dataclass(frozen=True, slots=True)
class Target:
    """The Descope project a command works on.

    ``base_url=None`` is derived from the project id as the official SDKs do (a 32+ character
    id carries its region). ``management_key`` is a ``Secret``: it shows nowhere, and one with
    a space, line break or control character inside is refused. A plain ``http://`` base URL
    to a host that is not loopback is refused unless ``allow_insecure_http`` (the key would
    cross the network unencrypted).
    """

    project_id: str
    management_key: Secret = field(repr=False)
    base_url: str | None = None
    allow_insecure_http: bool = False
    _embedded: _Embedded | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            project_id = _text(self.project_id)
            base_url = _url(self.base_url) if self.base_url is not None else None
        except ValueError as exc:
            raise UsageError(f"Target: {exc}", setting="project_id") from None
        if not isinstance(self.management_key, Secret) or not self.management_key.reveal():
            # never the value in the message: it may be the key itself
            raise UsageError(
                "Target: management_key must be a non-empty batchphone.Secret(...)",
                setting="management_key",
            )
        key = check_key(self.management_key.reveal(), "Target")
        if base_url is None:
            from batchphone.remote.client import derive_base_url

            base_url = derive_base_url(project_id)
        check_plain_http(base_url, allowed=self.allow_insecure_http)
        object.__setattr__(self, "project_id", project_id)
        object.__setattr__(self, "base_url", base_url)
        if key != self.management_key:  # whitespace around it (a key file's line end)
            object.__setattr__(self, "management_key", key)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, allow_insecure_http: bool = False
    ) -> Target:
        """The project of ``DESCOPE_PROJECT_ID``, ``DESCOPE_MANAGEMENT_KEY`` and (optionally)
        ``DESCOPE_BASE_URI``, as the SDKs read them. ``UsageError`` when one is missing."""
        env = os.environ if env is None else env
        project_id = env.get("DESCOPE_PROJECT_ID", "").strip()
        key = env.get("DESCOPE_MANAGEMENT_KEY", "").strip()
        if not project_id:
            raise UsageError("DESCOPE_PROJECT_ID is not set", setting="project_id")
        if not key:
            raise UsageError("DESCOPE_MANAGEMENT_KEY is not set", setting="management_key")
        secret = check_key(key, "environment variable DESCOPE_MANAGEMENT_KEY")
        base_url = env.get("DESCOPE_BASE_URI", "").strip() or None
        return cls(project_id, secret, base_url, allow_insecure_http)

    @classmethod
    def emulator(
        cls,
        users: PathLike | Sequence[Mapping[str, Any]] | None = None,
        *,
        state: PathLike | None = None,
    ) -> Target:
        """The embedded emulator, in process: it opens no socket and reads no environment.

        ``users``: a users file (as ``--emulator-users``) or the users themselves (dicts with
        ``loginId``, ``phone``, ...); ``None`` seeds one user per login id of the first input
        (for ``undo``: each user the run updated, with the phone the run set). ``state``: a
        JSON file the users are read from when it exists and written back after every call
        (as ``--emulator-state``: not after one that failed before reaching the emulator; the
        file is locked while a call uses it). Calls with the same target share one emulated
        project.
        """
        import secrets

        from batchphone.modes.rehearsal import EMULATOR_BASE_URL, EMULATOR_PROJECT_ID

        seed: Path | Sequence[Mapping[str, Any]] | None
        seed = Path(users) if isinstance(users, str | os.PathLike) else users
        key = secrets.token_urlsafe(24)
        # its base URL is never reached (the transport is in process): plain http is harmless
        target = cls(EMULATOR_PROJECT_ID, Secret(key), EMULATOR_BASE_URL, allow_insecure_http=True)
        state_path = Path(state) if state is not None else None
        object.__setattr__(target, "_embedded", _Embedded(seed, state_path, key))
        return target

    @classmethod
    def from_settings(cls, settings: Settings) -> Target | None:
        """The target ``settings`` name (from ``load_settings``): the emulator when they ask
        for it (``emulator``/``emulator_state``), else their project, else ``None``."""
        if settings.emulator or settings.emulator_state is not None:
            return cls.emulator(settings.emulator_users, state=settings.emulator_state)
        if not settings.project_id:
            return None
        if settings.management_key is None:
            raise UsageError(
                "no management key: set DESCOPE_MANAGEMENT_KEY or use management_key_file=PATH",
                setting="management_key",
            )
        return cls(
            settings.project_id,
            settings.management_key,
            settings.base_url,
            allow_insecure_http=settings.allow_insecure_http,
        )

    @property
    def is_emulator(self) -> bool:
        """Whether this is ``Target.emulator()`` (nothing it does leaves the process)."""
        return self._embedded is not None


def run(
    input_path: PathLike,
    /,
    *,
    out: PathLike,
    target: Target | None = None,
    settings: Settings | None = None,
    login_id_column: str | None = None,
    phone_column: str | None = None,
    default_region: str | None = None,
    verified: bool | None = None,
    sheet: str | int | None = None,
    delimiter: str | None = None,
    allow_remove: bool | None = None,
    limit: int | None = None,
    columns: str | Sequence[str] | None = None,
    short_out: PathLike | None = None,
    rate: str | None = None,
    concurrency: int | None = None,
    timeout: float | None = None,
    max_attempts: int | None = None,
    max_error_rate: float | None = None,
    budget_store: str | None = None,
    allow_merge: bool | None = None,
    dry_run: bool | None = None,
    restart: bool | None = None,
    retry_failed: bool | None = None,
    no_lookup: bool | None = None,
    api: str | None = None,
    batch_size: int | None = None,
    canary: int | None = None,
    progress: Progress | None = None,
    handle_signals: bool = False,
) -> Summary:
    """Update the phones of the users in ``input_path``; one result row per input row to ``out``.

    ``batchphone run``: rerunning the same call resumes. ``settings`` (e.g. from
    ``load_settings()``) is the base the keywords override; ``None`` keywords are left as the
    settings say. Returns the ``Summary`` (``exit_code`` 0, 1, 3, 4 or 130, as the CLI's).
    """
    return _call(Command.RUN, _given(locals()))


def plan(
    input_path: PathLike,
    /,
    *,
    out: PathLike,
    target: Target | None = None,
    settings: Settings | None = None,
    login_id_column: str | None = None,
    phone_column: str | None = None,
    default_region: str | None = None,
    verified: bool | None = None,
    sheet: str | int | None = None,
    delimiter: str | None = None,
    allow_remove: bool | None = None,
    limit: int | None = None,
    columns: str | Sequence[str] | None = None,
    short_out: PathLike | None = None,
    rate: str | None = None,
    concurrency: int | None = None,
    timeout: float | None = None,
    max_attempts: int | None = None,
    max_error_rate: float | None = None,
    budget_store: str | None = None,
    restart: bool | None = None,
    api: str | None = None,
    batch_size: int | None = None,
    progress: Progress | None = None,
    handle_signals: bool = False,
) -> Summary:
    """Show what ``run`` would change and cost (``batchphone plan``): reads users, updates none."""
    return _call(Command.PLAN, _given(locals()))


def undo(
    input_path: PathLike,
    /,
    *,
    out: PathLike,
    target: Target | None = None,
    settings: Settings | None = None,
    allow_remove: bool | None = None,
    limit: int | None = None,
    columns: str | Sequence[str] | None = None,
    short_out: PathLike | None = None,
    rate: str | None = None,
    concurrency: int | None = None,
    timeout: float | None = None,
    max_attempts: int | None = None,
    max_error_rate: float | None = None,
    budget_store: str | None = None,
    dry_run: bool | None = None,
    restart: bool | None = None,
    retry_failed: bool | None = None,
    api: str | None = None,
    batch_size: int | None = None,
    progress: Progress | None = None,
    handle_signals: bool = False,
) -> Summary:
    """Restore the phones a run updated, from its result file (``batchphone undo``)."""
    return _call(Command.UNDO, _given(locals()))


def validate(
    input_path: PathLike,
    /,
    *,
    out: PathLike | None = None,
    settings: Settings | None = None,
    login_id_column: str | None = None,
    phone_column: str | None = None,
    default_region: str | None = None,
    verified: bool | None = None,
    sheet: str | int | None = None,
    delimiter: str | None = None,
    allow_remove: bool | None = None,
    limit: int | None = None,
    columns: str | Sequence[str] | None = None,
    short_out: PathLike | None = None,
    progress: Progress | None = None,
    handle_signals: bool = False,
) -> Summary:
    """Normalize only and report what ``run`` would send (``batchphone validate``): no call.

    Without ``out`` the report is written to a temporary folder, deleted before returning
    (``summary.result_path`` is then ``None``).
    """
    return _call(Command.VALIDATE, _given(locals()))


def _given(arguments: dict[str, Any]) -> dict[str, Any]:
    # called first thing with locals(): the function's parameters and nothing else, so a
    # keyword added to a signature needs no other line
    return dict(arguments)


def _call(command: Command, arguments: dict[str, Any]) -> Summary:
    input_path = Path(arguments.pop("input_path"))
    out = arguments.pop("out", None)
    target: Target | None = arguments.pop("target", None)
    base: Settings | None = arguments.pop("settings", None)
    progress: Progress | None = arguments.pop("progress", None)
    handle_signals = bool(arguments.pop("handle_signals", False))
    job_options = _job_options(arguments)
    if base is not None and not isinstance(base, Settings):
        raise UsageError("settings: expected a batchphone.Settings", setting="settings")
    if target is not None and not isinstance(target, Target):
        raise UsageError("target: expected a batchphone.Target", setting="target")
    settings = dataclasses.replace(base or Settings(), **parse_options(arguments, source="keyword"))
    if command is Command.VALIDATE:
        # validate calls nothing: the settings' target (even an emulator) plays no part
        settings = dataclasses.replace(
            settings, emulator=False, emulator_state=None, emulator_users=None
        )
        # without ``out`` the rows are judged and counted, and nothing is written anywhere
        return _execute(
            command, input_path, None if out is None else Path(out), settings, None,
            job_options, progress, handle_signals,
        )  # fmt: skip
    if out is None:
        raise UsageError("out: the result file is required", setting="out")
    if command is Command.RUN and settings.dry_run and target is None:
        wants_emulator = settings.emulator or settings.emulator_state is not None
        if not wants_emulator:
            # a dry run calls nothing (every sendable row ends would_update): no project needed
            return _execute(
                command, input_path, Path(out), settings, None, job_options, progress,
                handle_signals,
            )  # fmt: skip
    target = _resolve_target(target, settings, from_settings=base is not None)
    if target._embedded is not None and target._embedded.state is not None:
        from batchphone.files.writer import check_side_paths

        # written back after the command: never over the input or the command's own files
        state = {"Target.emulator(state=...)": target._embedded.state}
        check_side_paths(state, input_path, Path(out))
    if target.is_emulator:  # an emulated project shares no budget with real runs
        settings = dataclasses.replace(settings, budget_store=BudgetStore.NONE)
    return _execute(
        command, input_path, Path(out), settings, target, job_options, progress, handle_signals
    )


def _job_options(arguments: dict[str, Any]) -> dict[str, Any]:
    """Take the job's keywords out of ``arguments``, checked."""
    options: dict[str, Any] = {}
    for option in _JOB_OPTIONS:
        value = arguments.pop(option.name, None)
        if value is None:
            continue
        try:
            options[option.name] = option.check(value)
        except (ValueError, TypeError) as exc:
            name = option.name
            raise UsageError(
                f"{name}: bad value {str(value)!r} (keyword {name}=): {exc}", setting=name
            ) from None
    return options


def _resolve_target(target: Target | None, settings: Settings, *, from_settings: bool) -> Target:
    wants_emulator = settings.emulator or settings.emulator_state is not None
    if target is None:
        resolved = Target.from_settings(settings)
        if resolved is None and from_settings:  # the CLI's case: say where a project id goes
            raise UsageError(
                "no project id: set DESCOPE_PROJECT_ID, project_id in config.toml, or "
                "project_id=...",
                setting="project_id",
            )
        if resolved is None:
            raise UsageError(
                "no target: pass target=batchphone.Target.from_env(), Target(project_id=..., "
                "management_key=Secret(...)) or Target.emulator()",
                setting="target",
            )
        return resolved
    if wants_emulator and not target.is_emulator:
        # the settings ask for a rehearsal: a real project must not get the calls instead
        raise UsageError(
            "the settings ask for the emulator (emulator/emulator_state), but the target is a "
            "real project: pass target=batchphone.Target.emulator(), or drop those settings",
            setting="emulator",
        )
    return target


def _endpoint(target: Target) -> Endpoint:
    """The project ``target`` names, as the runner takes it."""
    assert target.base_url is not None  # Target derives it when not given
    return Endpoint(target.project_id, target.base_url, target.management_key)


def rehearsal(
    target: Target, command: Command | str, input_path: PathLike, settings: Settings
) -> Rehearsal | None:
    """The emulated project behind an emulator ``target`` (seeded now if not yet), else ``None``.

    For the CLI, which says where the users came from before the command starts.
    """
    if target._embedded is None:
        return None
    return target._embedded.open(Path(input_path), Command.parse(command), settings)


def _execute(
    command: Command,
    input_path: Path,
    out: Path | None,
    settings: Settings,
    target: Target | None,
    job_options: dict[str, Any],
    progress: Progress | None,
    handle_signals: bool,
) -> Summary:
    from batchphone.modes import runner  # looked up at call time: tests replace runner.run_sync
    from batchphone.modes.command import decide
    from batchphone.modes.job import Job

    job = Job(command=command, input_path=input_path, out_path=out, **job_options)
    embedded = target._embedded if target is not None else None
    if embedded is None:
        # the key a Secret until client.py builds the header
        plan = decide(job, settings, _endpoint(target) if target is not None else None)
        return runner.run_sync(plan, progress=progress, handle_signals=handle_signals)
    try:
        found = embedded.open(input_path, command, settings)
        summary = runner.run_sync(
            decide(job, settings, found.target),
            progress=progress,
            transport_factory=found.transport_factory,
            handle_signals=handle_signals,
        )
    except BaseException:
        embedded.close(succeeded=False)  # writes the state only if a call was made
        raise
    embedded.close(succeeded=True)
    return dataclasses.replace(summary, emulator_users=found.origin)
