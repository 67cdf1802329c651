"""Row rules: turn input rows into update requests, or into results that need no call.

Pure and synchronous (the runner calls it from a worker thread, one batch at a time). Rows whose
login id occurs more than once in the input are held back until the input ends, because a later
row can make an earlier one a conflicting duplicate: none of those may be sent before we know.
Only those rows are held, so memory stays proportional to the repeated rows, not to the input.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypedDict, Unpack

from batchphone.cells import parse_flag
from batchphone.models import (
    InputRow,
    Normalized,
    Reason,
    RowResult,
    Status,
    UpdateRequest,
    User,
)
from batchphone.rows.normalize import normalize

__all__ = [
    "EXPLANATIONS",
    "Intend",
    "Mode",
    "Outcome",
    "Prepared",
    "Preparer",
    "ResultFields",
    "RowRules",
    "UserFields",
    "local_result",
    "now_iso",
    "result_for",
    "unsettled",
    "user_fields",
]


class Mode(enum.Enum):
    """What happens to a sendable row."""

    RUN = "run"  # it becomes an UpdateRequest
    DRY_RUN = "dry_run"  # it ends as would_update
    VALIDATE = "validate"  # it ends as valid
    PLAN = "plan"  # it is looked up and ends as change, unchanged, ...: nothing is sent


#: One sentence per reason, written for the support person reading the result file.
EXPLANATIONS: dict[Reason, str] = {
    Reason.INVALID_NUMBER: "not a valid phone number",
    Reason.MISSING_REGION: "national number without a country: add a region column or "
    "--default-region, or write it as +<country code>...",
    Reason.EMPTY_PHONE: "empty phone: not sent (use --allow-remove to remove the user's phone)",
    Reason.EXTENSION_PRESENT: "the number has an extension, which E.164 cannot carry: not sent",
    Reason.SCIENTIFIC_NOTATION: "a spreadsheet turned this number into scientific notation: "
    "format the column as text and export again",
    Reason.TOO_SHORT: "too few digits for a phone number",
    Reason.TOO_LONG: "too many digits for a phone number",
    Reason.INVALID_COUNTRY_CODE: "no country has this calling code",
    Reason.INVALID_REGION: "the region cell is not a known ISO 3166 country code",
    Reason.NUMERIC_CELL: "the cell holds a number, not text: its + or leading 0 may be lost; "
    "store phones as text",
    Reason.INVALID_VERIFIED: "the verified cell must be true/false, yes/no or 1/0",
    Reason.EMPTY_LOGIN_ID: "empty login id",
    Reason.DUPLICATE_ROW: "same login id and phone as an earlier row, which was sent",
    Reason.CONFLICTING_DUPLICATE: "the same login id appears with different phones or verified "
    "flags: none of its rows was sent",
    Reason.NOT_UPDATED: "the run did not update this row: nothing to undo",
    Reason.NO_BEFORE_IMAGE: "the run did not read this user's phone before updating it: "
    "it cannot be restored",
    Reason.IN_FLIGHT: "the call was on its way when the run ended: rerun the same command, "
    "which reads the user back and settles the row",
    Reason.ANSWER_LOST: "the call was sent but its answer was lost (timeout, dropped "
    "connection, server error), so it may have been applied: rerun the same command, which "
    "reads the user back and settles the row; undo restores it if it was applied",
    Reason.CONFIRMED_BY_READ: "the call's answer was lost; reading the user back showed the "
    "update applied",
    Reason.NOT_APPLIED: "the call's answer was lost and reading the user back showed the "
    "update was not applied: --retry-failed sends it again",
    Reason.ANSWER_MISMATCH: "the API answered 200, but the user it returned does not hold "
    "the phone and verified flag sent",
    Reason.UNREACHABLE: "not sent: nothing answered at the API base URL (connection refused or "
    "no such host); fix the base URL and rerun to resume",
    Reason.REFORMATTED: "the user's phone was this number stored in another format: it is "
    "stored in E.164 now, with the user's verified flag unless the row gave one",
    Reason.SAME_NUMBER: "the user holds this number in E.164 already: the before-image is the "
    "same number in another format, which is never sent back",
}


_last_stamp: tuple[int, str] = (-1, "")


def now_iso() -> str:
    """The current time as ISO 8601 UTC with milliseconds, as written in ``finished_at``.

    Formatting a datetime costs more than judging a row, and a batch of local rows finishes
    within the same millisecond many times over: the text is reused while the millisecond lasts.
    """
    global _last_stamp
    millis = time.time_ns() // 1_000_000
    if _last_stamp[0] != millis:
        stamp = datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="milliseconds")
        _last_stamp = (millis, stamp.replace("+00:00", "Z"))
    return _last_stamp[1]


class UserFields(TypedDict, total=False):
    """The result fields a user the API returned fills (``user_fields``)."""

    user_id: str | None
    verified_phone: bool | None
    user_json: str | None


class ResultFields(UserFields, total=False):
    """The fields of a ``RowResult`` a stage may set besides the row's own and its status."""

    reason: Reason | None
    http_status: int | None
    error_code: str | None
    error_message: str | None
    attempts: int


def result_for(
    request: UpdateRequest, *, status: Status, **fields_: Unpack[ResultFields]
) -> RowResult:
    """The result of a row that became ``request``; a known before-image fills its columns."""
    return RowResult(
        row=request.row,
        login_id=request.login_id,
        phone_input=request.phone_input,
        phone=request.phone,
        status=status,
        finished_at=now_iso(),
        extra=request.before.columns() if request.before is not None else {},
        line=request.line,
        **fields_,
    )


def unsettled(
    request: UpdateRequest,
    reason: Reason = Reason.ANSWER_LOST,
    *,
    http_status: int | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
    attempts: int = 0,
) -> RowResult:
    """The result of a row whose call may have been applied: nobody knows yet (a read will).

    Its before-image is kept, so undo can restore the user either way; ``error_message`` (the
    last error, when there was one) goes after the explanation.
    """
    explanation = EXPLANATIONS[reason]
    return result_for(
        request,
        status=Status.UNSETTLED,
        reason=reason,
        http_status=http_status,
        error_code=error_code,
        error_message=f"{explanation} ({error_message})" if error_message else explanation,
        attempts=attempts,
    )


def user_fields(user: User | None) -> UserFields:
    """The result fields taken from a user the API returned (none when there is no user)."""
    if user is None:
        return {}
    return {
        "user_id": user.user_id,
        "verified_phone": user.verified_phone,
        "user_json": json.dumps(user.raw, separators=(",", ":"), ensure_ascii=False),
    }


@dataclass(frozen=True, slots=True)
class RowRules:
    """The options that decide what is sent for a row."""

    mode: Mode = Mode.RUN
    default_region: str | None = None
    verified: bool | None = None
    allow_merge: bool = False
    allow_remove: bool = False


Prepared = UpdateRequest | RowResult
#: Journals, before a call that may change users leaves, the rows it carries (write-ahead).
Intend = Callable[[Sequence[UpdateRequest]], None]
#: What ``Preparer.outcomes`` says of a row: its final status, reason and E.164 phone.
Outcome = tuple[Status, Reason | None, str | None]
_Memo = dict[tuple[str | None, str | None, bool], Normalized]


def local_result(
    row: InputRow, status: Status, reason: Reason | None, phone: str | None
) -> RowResult:
    """The result of ``row`` settled here, without a call: ``reason`` explained in words."""
    message = EXPLANATIONS.get(reason) if reason else None
    return RowResult(
        row=row.row,
        login_id=row.login_id,
        phone_input=row.phone_raw,
        phone=phone,
        status=status,
        reason=reason,
        error_message=message,
        finished_at=now_iso(),
        line=row.line,
    )


class Preparer:
    """Applies the row rules batch by batch; ``finish`` settles the held duplicate groups."""

    def __init__(self, rules: RowRules, repeated_login_ids: Iterable[str] = ()) -> None:
        self.rules = rules
        self._repeated = frozenset(repeated_login_ids)
        self._held: dict[str, list[tuple[InputRow, Prepared]]] = {}

    @property
    def repeated(self) -> frozenset[str]:
        """The login ids on more than one row: their rows are held until ``finish``."""
        return self._repeated

    def prepare(self, rows: Iterable[InputRow]) -> list[Prepared]:
        """What to do with each row, in order; rows of repeated login ids come out of ``finish``."""
        out: list[Prepared] = []
        memo: _Memo = {}
        for row in rows:
            verdict = self._judge(row, memo)
            if row.login_id is not None and row.login_id in self._repeated:
                self._held.setdefault(row.login_id, []).append((row, verdict))
            else:
                out.append(self._settle(row, verdict))
        return out

    def finish(self) -> list[Prepared]:
        """Resolve every held group: one send for exact duplicates, none for conflicting ones."""
        out: list[Prepared] = []
        for group in self._held.values():
            sendable = [(row, v) for row, v in group if isinstance(v, UpdateRequest)]
            distinct = {(v.phone, v.verified) for _, v in sendable}
            first = sendable[0][0].row if sendable else None
            for row, verdict in group:
                if not isinstance(verdict, UpdateRequest):
                    out.append(verdict)
                elif len(distinct) > 1:
                    out.append(
                        local_result(row, Status.INVALID, Reason.CONFLICTING_DUPLICATE, None)
                    )
                elif row.row == first:
                    out.append(self._settle(row, verdict))
                else:
                    out.append(local_result(row, Status.DUPLICATE, Reason.DUPLICATE_ROW, None))
        self._held.clear()
        out.sort(key=lambda item: item.row)
        return out

    def outcomes(self, rows: Iterable[InputRow]) -> list[Outcome]:
        """``validate`` and dry runs: the final (status, reason, phone) of each row, in order.

        The same rules as ``prepare`` without building a request and a result per row (the
        report path writes these straight to the result file). Rows of repeated login ids are
        not held here: the caller settles them through ``prepare`` and ``finish`` first.
        """
        mode = self.rules.mode
        if mode not in (Mode.DRY_RUN, Mode.VALIDATE):
            raise ValueError(f"outcomes: rows of a {mode.value} job need requests, not outcomes")
        ok = Status.WOULD_UPDATE if mode is Mode.DRY_RUN else Status.VALID
        out: list[Outcome] = []
        memo: _Memo = {}
        for row in rows:
            reason, phone, _ = self._verdict(row, memo)
            if reason is not None:
                out.append((Status.INVALID, reason, None))
            else:
                out.append((ok, Reason.REMOVE_PHONE if phone == "" else None, phone))
        return out

    def _settle(self, row: InputRow, verdict: Prepared) -> Prepared:
        if isinstance(verdict, RowResult) or self.rules.mode in (Mode.RUN, Mode.PLAN):
            return verdict
        status = Status.WOULD_UPDATE if self.rules.mode is Mode.DRY_RUN else Status.VALID
        reason = Reason.REMOVE_PHONE if verdict.phone == "" else None
        return local_result(row, status, reason, verdict.phone)

    def _judge(self, row: InputRow, memo: _Memo) -> Prepared:
        reason, phone, verified = self._verdict(row, memo)
        if reason is not None or phone is None or row.login_id is None:
            return local_result(row, Status.INVALID, reason or Reason.INVALID_NUMBER, None)
        return UpdateRequest(
            row=row.row,
            login_id=row.login_id,
            phone=phone,
            verified=verified,
            fail_on_conflict=not self.rules.allow_merge,
            phone_input=row.phone_raw,
            line=row.line,
        )

    def _verdict(self, row: InputRow, memo: _Memo) -> tuple[Reason | None, str | None, bool | None]:
        """(reason the row cannot be sent, or None; its E.164 phone; its verified flag)."""
        rules = self.rules
        if row.login_id is None or not row.login_id.strip():
            return Reason.EMPTY_LOGIN_ID, None, None
        verified = rules.verified
        if row.verified_raw is not None and row.verified_raw.strip():
            verified = parse_flag(row.verified_raw)
            if verified is None:
                return Reason.INVALID_VERIFIED, None, None
        region = row.region.strip() if row.region and row.region.strip() else rules.default_region
        # a phone repeated within the batch (a switchboard, a shared number) is normalized once
        key = (row.phone_raw, region, row.phone_was_number)
        result: Normalized | None = memo.get(key)
        if result is None:
            result = memo[key] = normalize(
                row.phone_raw,
                region,
                allow_remove=rules.allow_remove,
                was_number=row.phone_was_number,
            )
        if result.reason is not None or result.e164 is None:
            return result.reason or Reason.INVALID_NUMBER, None, None
        return None, result.e164, verified
