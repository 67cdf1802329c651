"""What a command means, decided once: ``decide`` turns a ``Job``, its settings and the project
it calls into one frozen ``CommandPlan``; every stage below reads the plan and decides nothing
again.

The plan says what becomes of a sendable row (``Mode``: run, plan, validate or dry run; an
``undo`` with ``dry_run`` is a plan, it reads the users as the undo would), the project it calls
(``endpoint``, ``None`` when it calls nothing), the row rules, which reads come before sending
(``ScreenRules``), the result file's columns, and how it is judged and ended (``local``: the
report straight from the rows, no journal and no pool).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from batchphone.config import Endpoint, Settings
from batchphone.errors import UsageError
from batchphone.files.journal import RunIdentity, journal_identity
from batchphone.files.reader import InputSource
from batchphone.files.writer import ShortSheet, short_sheet
from batchphone.models import RESULT_COLUMNS, Command
from batchphone.modes.job import Job
from batchphone.modes.reverse import UndoSource
from batchphone.options import Sending
from batchphone.remote.screen import ScreenRules
from batchphone.rows.prepare import Mode, RowRules

__all__ = ["CommandPlan", "decide", "run_identity"]


@dataclass(frozen=True, slots=True)
class CommandPlan:
    """One command, decided: what it does, with which rows, against which project."""

    job: Job
    settings: Settings
    mode: Mode
    #: the project the command works on (``None``: a command that calls nothing, given none)
    endpoint: Endpoint | None
    rows: RowRules
    screen: ScreenRules
    #: the result file's columns: the before-images come with every read of the users
    columns: tuple[str, ...]
    #: the rows are judged and written straight from the input (``validate``, a dry run)
    local: bool
    #: the short sheet written with the result file (``--columns``, ``--short-out``), if any
    short: ShortSheet | None = None

    @property
    def command(self) -> Command:
        return self.job.command

    @property
    def input_path(self) -> Path:
        return self.job.input_path

    @property
    def api(self) -> str:
        return self.job.api

    @property
    def batch_size(self) -> int | None:
        """Rows per patch call with ``--api batch``; ``None`` when each row is its own call."""
        return self.job.batch_size if self.job.api is Sending.BATCH else None

    @property
    def calls_api(self) -> bool:
        """The command talks to the project (a run, an undo, a plan)."""
        return self.mode in (Mode.RUN, Mode.PLAN)

    @property
    def sends(self) -> bool:
        """Its workers send updates (not a plan's or a dry run's rows)."""
        return self.mode is Mode.RUN

    @property
    def is_plan(self) -> bool:
        return self.mode is Mode.PLAN

    @property
    def dry_run(self) -> bool:
        return self.mode is Mode.DRY_RUN

    @property
    def is_undo(self) -> bool:
        return self.job.command is Command.UNDO

    @property
    def resumable(self) -> bool:
        """It keeps a journal to resume from (a ``validate`` or a dry run is run again)."""
        return not self.local


def decide(job: Job, settings: Settings, endpoint: Endpoint | None) -> CommandPlan:
    """The plan of ``job``: refuses options that cannot go together, before anything opens."""
    if endpoint is not None and not isinstance(endpoint, Endpoint):
        # a dict would fail later, halfway into the journal (and never show the key)
        raise UsageError("target: expected a batchphone.config.Endpoint", setting="target")
    mode = _mode(job, settings)
    calls_api = mode in (Mode.RUN, Mode.PLAN)
    if calls_api and endpoint is None:
        raise UsageError(f"{job.command.value}: no target: it calls the API", setting="target")
    screen = _screen(job, settings, mode)
    return CommandPlan(
        job=job,
        settings=settings,
        mode=mode,
        endpoint=endpoint,
        rows=RowRules(
            mode=mode,
            default_region=settings.default_region,
            verified=settings.verified,
            allow_merge=settings.allow_merge,
            allow_remove=settings.allow_remove,
        ),
        screen=screen,
        columns=RESULT_COLUMNS + screen.columns,
        local=mode in (Mode.VALIDATE, Mode.DRY_RUN) and job.command is not Command.UNDO,
        short=short_sheet(job.out_path, settings.short_out, settings.columns),
    )


def _mode(job: Job, settings: Settings) -> Mode:
    """What the job does with sendable rows; refuses options that cannot go together."""
    if job.command is Command.VALIDATE:
        mode = Mode.VALIDATE
    elif job.command is Command.PLAN or (settings.dry_run and job.command is Command.UNDO):
        mode = Mode.PLAN  # a dry undo reads the users, as the undo would: it is a plan
    else:
        mode = Mode.DRY_RUN if settings.dry_run else Mode.RUN
    if job.api is Sending.BATCH and settings.allow_merge and mode is Mode.RUN:
        raise UsageError(
            "allow_merge=True cannot be used with api=batch: a batch patch has no failOnConflict, "
            "so batchphone refuses every phone that is another user's login id there",
            setting="allow_merge",
        )
    if job.canary and mode is not Mode.RUN:
        raise UsageError(
            "canary=... reads back the updates it sent: it cannot be used with dry_run=True",
            setting="canary",
        )
    return mode


def _screen(job: Job, settings: Settings, mode: Mode) -> ScreenRules:
    """Which reads come before sending: nothing is read when nothing could be sent.

    A run reads every user first unless ``no_lookup``; undo always does (it must not overwrite
    a phone changed since the run).
    """
    if mode not in (Mode.RUN, Mode.PLAN):
        return ScreenRules()
    compare = mode is Mode.PLAN or job.command is Command.UNDO or not settings.no_lookup
    # a plan always shows conflicts; a batch patch cannot refuse them itself
    guard = mode is Mode.PLAN or job.api is Sending.BATCH or (compare and not settings.allow_merge)
    return ScreenRules(compare=compare, guard=guard, plan=mode is Mode.PLAN)


def run_identity(plan: CommandPlan, source: InputSource | UndoSource) -> RunIdentity:
    """What makes this run the same run (its journal resumes only an equal one)."""
    settings, target = plan.settings, plan.endpoint
    return RunIdentity(
        command=plan.command,
        input_name=plan.job.input_path.name,
        input_sha256=source.content_hash(),
        # a job that calls nothing names the project its settings name, as given
        project_id=target.project_id if target is not None else settings.project_id,
        base_url=target.base_url if target is not None else settings.base_url,
        login_id_column=settings.login_id_column,
        phone_column=settings.phone_column,
        default_region=settings.default_region,
        verified=settings.verified,
        allow_merge=settings.allow_merge,
        allow_remove=settings.allow_remove,
        dry_run=settings.dry_run or plan.command in (Command.VALIDATE, Command.PLAN),
        no_lookup=settings.no_lookup,
        api=plan.api,
        batch_size=plan.batch_size,
        sheet=_sheet(plan, source),
        emulated=target.emulated if target is not None else None,
    )


def _sheet(plan: CommandPlan, source: InputSource | UndoSource) -> str | None:
    """The sheet in the run's identity: its name as the workbook spells it, so that every way
    ``--sheet`` can name it (any case, its number) resumes the same run. A journal that names
    the same sheet another way (written before names were spelled so) keeps its spelling."""
    sheet = plan.settings.sheet
    if not isinstance(source, InputSource):
        return sheet
    name = source.sheet_name(sheet)
    if name is None:
        return sheet
    out = plan.job.out_path
    old = journal_identity(out).get("sheet") if out is not None else None
    if isinstance(old, str) and old != name and source.sheet_name(old) == name:
        return old
    return name
