"""The data that flows through batchphone: frozen, slotted, free of I/O.

The way of a row: ``InputRow`` (reader) -> ``Normalized`` (normalizer) -> ``UpdateRequest``
(runner) -> ``ApiOutcome`` (client) -> ``RowResult`` (journal) -> ``ResultCells`` (writer).
"""

from __future__ import annotations

import dataclasses
import enum
import time
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = [
    "CELL_TYPES",
    "FINAL_STATUSES",
    "LOOKUP_COLUMNS",
    "PLAN_COLUMNS",
    "RESULT_COLUMNS",
    "RESUME_HINT",
    "SUCCESS_STATUSES",
    "ApiOutcome",
    "Command",
    "InputRow",
    "Normalized",
    "NotValidRow",
    "PhoneState",
    "Reason",
    "ResultCells",
    "RowResult",
    "Status",
    "Summary",
    "UpdateRequest",
    "User",
    "flag_text",
    "next_step",
]


class Command(enum.StrEnum):
    """What a job does. A string that is not one of these is refused, never taken for ``run``."""

    RUN = "run"
    VALIDATE = "validate"
    PLAN = "plan"
    UNDO = "undo"

    @classmethod
    def parse(cls, value: object) -> Command:
        """``value`` as a command, or ``ValueError`` naming the valid ones (exact spelling)."""
        if isinstance(value, str) and value in cls._value2member_map_:
            return cls(value)
        names = ", ".join(command.value for command in cls)
        hint = ""
        if isinstance(value, str) and value.strip().lower() in cls._value2member_map_:
            hint = f" (did you mean {value.strip().lower()!r}?)"
        raise ValueError(f"unknown command {value!r}{hint}: expected one of {names}")


class Status(enum.StrEnum):
    """The one status every result row ends with."""

    UPDATED = "updated"
    WOULD_UPDATE = "would_update"
    VALID = "valid"
    CHANGE = "change"  # plan: a run would send it (phone_before -> phone)
    UNCHANGED = "unchanged"
    INVALID = "invalid"
    DUPLICATE = "duplicate"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    SKIPPED = "skipped"  # undo: deliberately left as is (see its reason)
    FAILED = "failed"
    #: sent, and no answer says whether it was applied: a read of the user settles it
    UNSETTLED = "unsettled"
    NOT_ATTEMPTED = "not_attempted"


#: Statuses that make the exit code 0.
SUCCESS_STATUSES = frozenset(
    {
        Status.UPDATED,
        Status.WOULD_UPDATE,
        Status.VALID,
        Status.CHANGE,
        Status.UNCHANGED,
        Status.DUPLICATE,
    }
)
#: Statuses a resumed run does not judge again (everything but ``not_attempted`` and
#: ``unsettled``, whose user is read back first).
FINAL_STATUSES = frozenset(set(Status) - {Status.NOT_ATTEMPTED, Status.UNSETTLED})


class Reason(enum.StrEnum):
    """Stable upper-case reason codes: scripts match on them, never rename one."""

    INVALID_NUMBER = "INVALID_NUMBER"
    MISSING_REGION = "MISSING_REGION"
    EMPTY_PHONE = "EMPTY_PHONE"
    EXTENSION_PRESENT = "EXTENSION_PRESENT"
    SCIENTIFIC_NOTATION = "SCIENTIFIC_NOTATION"
    TOO_SHORT = "TOO_SHORT"
    TOO_LONG = "TOO_LONG"
    INVALID_COUNTRY_CODE = "INVALID_COUNTRY_CODE"
    INVALID_REGION = "INVALID_REGION"
    NUMERIC_CELL = "NUMERIC_CELL"
    INVALID_VERIFIED = "INVALID_VERIFIED"
    EMPTY_LOGIN_ID = "EMPTY_LOGIN_ID"
    DUPLICATE_ROW = "DUPLICATE_ROW"
    CONFLICTING_DUPLICATE = "CONFLICTING_DUPLICATE"
    USER_NOT_FOUND = "USER_NOT_FOUND"
    PHONE_CONFLICT = "PHONE_CONFLICT"
    RETRIES_EXHAUSTED = "RETRIES_EXHAUSTED"
    REJECTED = "REJECTED"
    REMOVE_PHONE = "REMOVE_PHONE"
    UNAUTHORIZED = "UNAUTHORIZED"
    STOPPED = "STOPPED"
    INTERRUPTED = "INTERRUPTED"
    CIRCUIT_OPEN = "CIRCUIT_OPEN"
    CHANGED_SINCE = "CHANGED_SINCE"
    NOT_UPDATED = "NOT_UPDATED"
    NO_BEFORE_IMAGE = "NO_BEFORE_IMAGE"
    CANARY_MISMATCH = "CANARY_MISMATCH"
    VERIFIED_ONLY = "VERIFIED_ONLY"
    #: unsettled: the call is on its way (the journal's record written before it leaves)
    IN_FLIGHT = "IN_FLIGHT"
    #: unsettled: the call was sent, its answer was lost (timeout, dropped connection, 5xx,
    #: an unusable 200, a cancelled call), so it may have been applied
    ANSWER_LOST = "ANSWER_LOST"
    #: updated: the answer was lost, and reading the user back showed the update applied
    CONFIRMED_BY_READ = "CONFIRMED_BY_READ"
    #: failed: the answer was lost, and reading the user back showed it was not applied
    NOT_APPLIED = "NOT_APPLIED"
    #: failed: a 200 whose returned user does not hold what was sent
    ANSWER_MISMATCH = "ANSWER_MISMATCH"
    UNREACHABLE = "UNREACHABLE"
    REFORMATTED = "REFORMATTED"
    SAME_NUMBER = "SAME_NUMBER"


@dataclass(frozen=True, slots=True)
class InputRow:
    """One data row as read: every cell a string (or ``None`` when the cell is empty/null).

    ``row`` is the 1-based data row number (the header is not counted): the journal's key.
    ``line`` is the number a person sees for the row (``None``: not known): the line where the
    record starts in a text editor (CSV, TSV, JSONL), the sheet's own row number (Excel), the
    record's position + 1 (Parquet, as if it had a header line).
    ``verified`` and ``region`` are the raw cells of the optional columns of those names.
    """

    row: int
    login_id: str | None
    phone_raw: str | None
    verified_raw: str | None = None
    region: str | None = None
    #: True when the phone cell held a number, not text (Parquet/Excel numeric cell): the leading
    #: ``+`` or ``0`` may have been lost, so the normalizer refuses it (``NUMERIC_CELL``).
    phone_was_number: bool = False
    #: what a person sees, not what the row is: left out of comparisons
    line: int | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Normalized:
    """What the normalizer made of one raw phone: E.164, or the reason it is not sendable.

    Exactly one of ``e164`` and ``reason`` is set, except for an intended removal
    (``e164 == ""`` and ``reason is None``), which only ``allow_remove`` produces.
    """

    e164: str | None
    reason: Reason | None = None


@dataclass(frozen=True, slots=True)
class PhoneState:
    """A user's phone (``""`` when none) and verified flag as a lookup read them.

    ``e164`` is the stored phone in E.164 when the screen read it as a number: a phone stored
    in a legacy format (``+1 646 300 0000``) is the same number as ``+16463000000``
    (``None``: not known).
    """

    phone: str
    verified: bool
    user_id: str | None = None
    e164: str | None = field(default=None, compare=False)

    def columns(self) -> dict[str, Any]:
        """The before-image columns of a result row."""
        return {"phone_before": self.phone, "verified_before": self.verified}


@dataclass(frozen=True, slots=True)
class User:
    """A Descope user as the API returned it: the fields batchphone reads, and the whole of it.

    ``raw`` is the user object exactly as answered, for the result file's ``user`` column; it
    holds personal data, so it is left out of ``repr`` (logs, tracebacks) and comparisons.
    """

    user_id: str | None
    login_ids: tuple[str, ...]
    phone: str  # "" when the user has none
    #: as answered (``None`` when the answer had no flag): the result file shows it so
    verified_phone: bool | None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> User:
        """Read a user object of an API answer; fields of the wrong type count as absent."""
        user_id = data.get("userId")
        login_ids = data.get("loginIds")
        phone = data.get("phone")
        verified = data.get("verifiedPhone")
        return cls(
            user_id=user_id if isinstance(user_id, str) else None,
            login_ids=tuple(i for i in login_ids if isinstance(i, str))
            if isinstance(login_ids, list)
            else (),
            phone=phone if isinstance(phone, str) else "",
            verified_phone=verified if isinstance(verified, bool) else None,
            raw=data,
        )

    @property
    def verified(self) -> bool:
        """The stored flag: the API stores a missing one as false."""
        return bool(self.verified_phone)


@dataclass(frozen=True, slots=True)
class UpdateRequest:
    """One call to ``POST /v1/mgmt/user/update/phone`` (``phone == ""`` removes the phone).

    ``verified`` is the row's own value (or ``--verified``); ``None`` when it has none.
    ``before`` is the user's state when a lookup read it (``None``: not looked up).
    ``expect_phone`` (undo): send only while the user's phone is still this one.
    ``prior`` is the before-image an earlier send of this row journaled (a call whose answer
    was lost, or a failed row): a user found holding what this request sends was changed by
    that call, so its result is ``updated`` with this image, never ``unchanged``.
    """

    row: int
    login_id: str
    phone: str
    verified: bool | None
    fail_on_conflict: bool = True
    phone_input: str | None = None
    before: PhoneState | None = None
    expect_phone: str | None = None
    prior: PhoneState | None = None
    #: the row's number as the input file shows it (``InputRow.line``)
    line: int | None = field(default=None, compare=False)

    @property
    def verified_sent(self) -> bool:
        """The ``verified`` sent, which is the ``verifiedPhone`` the user has afterwards.

        Always explicit: the API reads a missing flag as false (descope-api.md), so a row
        without a value says false out loud, and a removed phone is never verified.
        """
        return bool(self.phone) and bool(self.verified)

    def held_by(self, user: User, *, lenient: bool = False) -> bool:
        """True when ``user`` holds what this request sends: its phone and verified flag.

        Phones compare by their digits, so a stored form with spaces is the same number.
        ``lenient``: an answer without a ``verifiedPhone`` is not held against it (a 200's
        user is checked so; a read of the user is not).
        """
        if _digits(user.phone) != _digits(self.phone):
            return False
        if lenient and user.verified_phone is None:
            return True
        return user.verified == self.verified_sent

    @property
    def change_reason(self) -> Reason | None:
        """What is worth saying about this change: a removal, the verified flag alone, or the
        same number stored in another format."""
        if self.phone == "":
            return Reason.REMOVE_PHONE
        if self.before is not None and self.before.phone == self.phone:
            return Reason.VERIFIED_ONLY
        if self.before is not None and self.before.e164 == self.phone:
            return Reason.REFORMATTED
        return None


def _digits(phone: str) -> str:
    return "".join(c for c in phone if c.isdigit())


@dataclass(frozen=True, slots=True)
class ApiOutcome:
    """The client's reading of one HTTP answer that is final for its row.

    Transient failures (5xx, timeouts, 429) are not outcomes: the client raises for them
    (see ``errors``) so the retry and rate pieces can act.
    """

    status: Status
    reason: Reason | None = None
    http_status: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    user: User | None = None


class ResultCells(NamedTuple):
    """One row of a result file: a cell per column, named as the column and of its type.

    The fields are every column a result file may have, in file order: ``RESULT_COLUMNS``,
    then ``LOOKUP_COLUMNS``, then ``PLAN_COLUMNS``; a file writes the ones its command has
    (``CELL_TYPES`` gives each one's type, ``None`` is an empty cell). It is what the writer
    takes, from the journal (``files.results``), from a report (``modes.report``) or from a
    ``RowResult`` (``cells``). A tuple, built by position, because millions of rows are: a
    result file's row costs what a plain tuple does, with names.
    """

    row: int
    #: the row's number as the input file shows it (``InputRow.line``)
    line: int | None
    loginId: str | None
    phone_input: str | None
    #: the E.164 sent
    phone: str | None
    #: a ``Status``'s text
    status: str
    #: a ``Reason``'s text
    reason: str | None = None
    http_status: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    attempts: int | None = None
    user_id: str | None = None
    verified_phone: bool | None = None
    #: the user the API returned, as compact JSON
    user: str | None = None
    #: ISO 8601 UTC
    finished_at: str | None = None
    phone_before: str | None = None
    #: ``true``/``false``: a text column in every format (undo reads it back as text)
    verified_before: str | None = None
    #: ``true``/``false``, as ``verified_before``: the flag a plan's run sends
    verified: str | None = None


#: Appended after ``RESULT_COLUMNS`` whenever a run looked users up (the before-image).
LOOKUP_COLUMNS: tuple[str, ...] = ("phone_before", "verified_before")
#: Appended after those in a plan file: the verified flag a run sends with ``phone``.
PLAN_COLUMNS: tuple[str, ...] = ("verified",)
#: The fixed columns of every result file, in this order.
RESULT_COLUMNS: tuple[str, ...] = tuple(
    name for name in ResultCells._fields if name not in LOOKUP_COLUMNS + PLAN_COLUMNS
)


def _cell_types() -> dict[str, type]:
    """``int | None`` -> ``int``: each field's type without its ``None``."""
    hints = typing.get_type_hints(ResultCells)
    return {
        name: next(kind for kind in typing.get_args(hint) or (hint,) if kind is not type(None))
        for name, hint in hints.items()
    }


#: Each result column's cell type (``int``, ``bool`` or ``str``), from ``ResultCells``.
CELL_TYPES: dict[str, type] = _cell_types()


def flag_text(flag: bool | None) -> str | None:
    """A flag as a text cell of a result file (``verified_before``, ``verified``)."""
    return None if flag is None else "true" if flag else "false"


@dataclass(frozen=True, slots=True)
class RowResult:
    """The one result of one input row; a result file holds exactly one per input row.

    ``user_json`` is the returned user serialized as compact JSON (or ``None``), so a result
    is cheap to journal and to write. ``finished_at`` is ISO 8601 UTC; ``finished_ts`` is the
    same instant as epoch seconds (the limiter is seeded from it after a crash).
    """

    row: int
    login_id: str | None
    phone_input: str | None
    phone: str | None
    status: Status
    reason: Reason | None = None
    http_status: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    attempts: int = 0
    user_id: str | None = None
    verified_phone: bool | None = None
    user_json: str | None = None
    finished_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    #: the row's number as the input file shows it (``InputRow.line``; ``None``: not known)
    line: int | None = field(default=None, compare=False)

    def to_record(self) -> dict[str, Any]:
        """The result row as a mapping of the fixed result columns (plus ``extra``)."""
        record: dict[str, Any] = {
            "row": self.row,
            "line": self.line,
            "loginId": self.login_id,
            "phone_input": self.phone_input,
            "phone": self.phone,
            "status": self.status.value,
            "reason": self.reason.value if self.reason else None,
            "http_status": self.http_status,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "attempts": self.attempts,
            "user_id": self.user_id,
            "verified_phone": self.verified_phone,
            "user": self.user_json,
            "finished_at": self.finished_at,
        }
        record.update(self.extra)
        return record

    def cells(self) -> ResultCells:
        """The result row as a result file holds it: ``extra``'s before-image and verified
        flag in their columns (a flag as text), any other key of ``extra`` left out."""
        extra = self.extra
        return ResultCells(
            self.row,
            self.line,
            self.login_id,
            self.phone_input,
            self.phone,
            self.status.value,
            self.reason.value if self.reason else None,
            self.http_status,
            self.error_code,
            self.error_message,
            self.attempts,
            self.user_id,
            self.verified_phone,
            self.user_json,
            self.finished_at,
            extra.get("phone_before"),
            flag_text(extra.get("verified_before")),
            flag_text(extra.get("verified")),
        )


@dataclass(frozen=True, slots=True)
class Summary:
    """What a finished run reports: counts by status and the figures a scheduler wants."""

    input_rows: int
    #: rows by status (a ``Status`` is its text: ``counts["updated"]`` finds it too)
    counts: dict[Status, int]
    requests: int
    rate_limited: int
    elapsed_s: float
    exit_code: int
    result_path: str | None = None
    resumed_rows: int = 0
    stopped_reason: str | None = None
    #: ``plan``: API calls a ``run`` (with its lookups) of the same file needs, and the least
    #: time the budget lets them take
    planned_calls: int | None = None
    planned_s: float | None = None
    #: files ``--restart`` moved aside instead of deleting them (result file, journal)
    moved_aside: tuple[str, ...] = ()
    #: rows made final by an API call in this call (the rest were final already, or local)
    sent_now: int = 0
    #: what to do now, when there is something to do (fix the key, rerun to resume, ...)
    next_step: str | None = None
    #: an emulator target: how many users it had, and where they came from
    emulator_users: str | None = None
    #: the short sheet (``--columns``, ``--short-out``) written with the result file, if any
    short_path: str | None = None
    #: ``validate`` without ``out``: the first rows that are not valid (``None``: not kept)
    not_valid: tuple[NotValidRow, ...] | None = None
    #: when the command ended (epoch seconds)
    finished_ts: float = field(default_factory=time.time)

    @property
    def calls(self) -> int:
        """API calls made (answered or not): ``requests`` in the JSON document."""
        return self.requests

    @property
    def completed(self) -> bool:
        """The command went through to the end: every row has its final result (exit 0 or 1).

        What a scheduler calls a successful sync: rows ``not_found`` or ``invalid`` are the
        input's business, and the next run judges them afresh. A run the canary stopped also
        exits 1, but its rows ``not_attempted`` were never sent, and ``unsettled`` rows are not
        final (the same command, run again, reads them back): no success.
        """
        open_rows = (Status.NOT_ATTEMPTED, Status.UNSETTLED)
        return self.exit_code in (0, 1) and not any(self.counts.get(s) for s in open_rows)

    def to_json(self) -> dict[str, Any]:
        """The ``--summary-json`` document, field for field."""
        document: dict[str, Any] = {
            "input_rows": self.input_rows,
            "counts": {str(status): n for status, n in sorted(self.counts.items())},
            "requests": self.requests,
            "rate_limited": self.rate_limited,
            "elapsed_s": round(self.elapsed_s, 3),
            "exit_code": self.exit_code,
            "result_path": self.result_path,
            "resumed_rows": self.resumed_rows,
            "sent_now": self.sent_now,
            "stopped_reason": self.stopped_reason,
            "next_step": self.next_step,
            "finished_ts": round(self.finished_ts, 3),
        }
        if self.planned_calls is not None:
            document["planned_calls"] = self.planned_calls
            document["planned_s"] = self.planned_s
        if self.moved_aside:
            document["moved_aside"] = list(self.moved_aside)
        if self.emulator_users is not None:
            document["emulator_users"] = self.emulator_users
        if self.short_path is not None:
            document["short_path"] = self.short_path
        if self.not_valid is not None:
            document["not_valid"] = [dataclasses.asdict(row) for row in self.not_valid]
        return document


@dataclass(frozen=True, slots=True)
class NotValidRow:
    """A row ``validate`` would not send, as its summary lists it (no personal data)."""

    row: int
    status: str
    reason: str
    explanation: str
    #: the row's number as the input file shows it (the number a person looks for)
    line: int | None = None


#: What to do after an interruption or a fatal stop of a command that resumes.
RESUME_HINT = "rerun the same command to resume: rows already final are not sent again"


def next_step(
    exit_code: int,
    *,
    resumable: bool,
    http_status: int | None = None,
    stopped: Reason | None = None,
    unsettled: int = 0,
    failed: int = 0,
    undo: bool = False,
) -> str | None:
    """What a person or a scheduler does after a command ended with ``exit_code``.

    ``resumable``: the command keeps a journal (a ``validate`` or a dry run does not: it is
    simply run again). ``http_status``: the 401/403 that stopped the run, if one did; a rerun
    alone would be refused the same way, so the key or the project comes first. ``stopped``:
    why the run stopped; ``unsettled``: rows whose call's answer was lost; ``failed``: rows
    that ended ``failed``, which is final (only ``retry_failed=True`` sends them again); ``undo``:
    the command was an undo (its failed rows are users not restored).
    """
    if http_status in (401, 403):
        return (
            f"fix the management key or the project id (HTTP {http_status}), then rerun the "
            "same command: it resumes, rows already final are not sent again"
        )
    if stopped is Reason.UNREACHABLE:
        return "fix the base URL (base_url=..., DESCOPE_BASE_URI), then rerun the same command"
    if exit_code == 4:
        return "fix the local cause (disk space, the input file), then " + RESUME_HINT
    if stopped is Reason.CIRCUIT_OPEN:
        unsettled_too = (
            f" (it reads the {unsettled} unsettled rows' users back first)" if unsettled else ""
        )
        return (
            "find why the calls failed (error_code and error_message in the result file), then "
            f"rerun the same command to resume{unsettled_too}"
        )
    if unsettled and resumable:
        return (
            (f"{unsettled} rows are" if unsettled > 1 else "1 row is")
            + " unsettled (the call's answer was lost): rerun the same "
            "command, which reads those users back first"
        )
    if exit_code == 1 and stopped is not None and resumable:
        # the canary stopped the run (every other stop has an exit code of its own)
        return (
            "the canary stopped the run: read the error_message of its failed rows in the "
            "result file and fix the cause, then " + RESUME_HINT
        )
    if exit_code == 1 and failed and resumable:
        rows = f"{failed} rows" if failed > 1 else "1 row"
        what = f"{rows} failed: those users are not restored" if undo else f"{rows} failed"
        return (
            f"{what} (see reason and error_message in the result file); once the cause is "
            "fixed, rerun the same command with retry_failed=True to send them again"
        )
    if exit_code not in (3, 130):
        return None
    if not resumable:
        return "nothing was sent: run the same command again to start over"
    return RESUME_HINT
