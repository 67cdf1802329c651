"""Sending rows: what the pool's workers do with an update request (or a batch of them).

Every call goes through the run's call stack (``remote.calls``: stop -> circuit -> retry ->
limiter -> HTTP); this module only turns what the stack says into one result per row:

* ``RowSender.process``: one ``update/phone`` call per row (``--api update``);
* ``RowSender.process_batch``: one patch per batch (``--api batch``); the rows the batch could
  not settle come back from ``BatchSender`` and go through ``process`` here, one by one;
* ``fetch_license``: the license handshake, before any row.

Write ahead, then act: each call that may change users is journaled first (``intend``: the
rows' before-images and what the call sets), and a call whose answer never came (lost after
every attempt, or cancelled on the wire by a hard stop) leaves its rows ``unsettled``, never
``failed`` or ``not_attempted``: it may have been applied, and only a read of the user says.
A 200 whose returned user does not hold what was sent is ``failed``/``ANSWER_MISMATCH``.
"""

from __future__ import annotations

from batchphone.errors import FatalRemoteError
from batchphone.models import ApiOutcome, Reason, RowResult, Status, UpdateRequest
from batchphone.remote.batch import BatchSender
from batchphone.remote.calls import Calls, failure_label, fatal_reason
from batchphone.remote.canary import mismatch
from batchphone.remote.retry import Attempted
from batchphone.remote.stop import Stopped
from batchphone.rows.prepare import Intend, result_for, unsettled, user_fields

__all__ = ["RowSender", "fetch_license", "not_attempted", "stopped_result"]


def not_attempted(
    request: UpdateRequest,
    reason: Reason,
    *,
    http_status: int | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> RowResult:
    """The result of a row the run stopped before sending."""
    return result_for(
        request,
        status=Status.NOT_ATTEMPTED,
        reason=reason,
        http_status=http_status,
        error_code=error_code,
        error_message=error_message,
    )


def _unauthorized(request: UpdateRequest, exc: FatalRemoteError) -> RowResult:
    return not_attempted(
        request,
        fatal_reason(exc),
        http_status=exc.http_status,
        error_code=exc.error_code,
        error_message=exc.message,
    )


def _update_verdicts(attempted: Attempted[ApiOutcome]) -> list[str | None]:
    """The circuit counts an update that failed after its retries, or was refused (a 4xx)."""
    outcome = attempted.value
    if outcome is None:
        return [failure_label(attempted.error)]
    if outcome.status is Status.FAILED:
        label = outcome.error_code or outcome.http_status or outcome.reason or Reason.REJECTED
        return [str(label)]
    return [None]


async def fetch_license(calls: Calls) -> None:
    """The license handshake, through the stack like every call (a 429 pauses the pool);
    a 401/403 here stops the run (the stack requests the stop) before any row is sent."""
    try:
        await calls(lambda client: client.fetch_license(), verdicts=lambda attempted: ())
    except (FatalRemoteError, Stopped):
        return


def _nothing(requests: object) -> None:
    """No journal to write ahead to (a caller that keeps no record)."""


def stopped_result(request: UpdateRequest, stopped: Stopped) -> RowResult:
    """The result of a row whose call a stop ended: unsettled if it may have gone out."""
    if stopped.maybe_applied:
        return unsettled(request, error_message="the run stopped with the call in flight")
    return not_attempted(request, stopped.reason)


class RowSender:
    """The pool's ``process`` functions: an update request (or a batch) in, results out.

    ``intend`` journals each call's rows before the call leaves (write-ahead).
    """

    def __init__(
        self, calls: Calls, batch: BatchSender | None = None, *, intend: Intend = _nothing
    ) -> None:
        self.calls = calls
        self.batch = batch
        self.intend = intend

    async def process(self, request: UpdateRequest) -> RowResult:
        """Send one row (``update/phone``, retried) and return its result."""
        try:
            attempted = await self.calls(
                lambda client: client.update_phone(request),
                verdicts=_update_verdicts,
                ahead=lambda: self.intend([request]),
            )
        except FatalRemoteError as exc:
            return _unauthorized(request, exc)
        except Stopped as stopped:
            return stopped_result(request, stopped)
        return _result(request, attempted)

    async def process_batch(self, requests: list[UpdateRequest]) -> list[RowResult]:
        """``--api batch``: one patch call for the batch; the rows it hands back, one by one."""
        assert self.batch is not None
        try:
            batched = await self.batch.send(requests)
        except FatalRemoteError as exc:
            return [_unauthorized(r, exc) for r in requests]
        by_row = {result.row: result for result in batched.settled}
        for request in batched.resend:
            by_row[request.row] = await self.process(request)
        return [by_row[r.row] for r in requests]


def _result(request: UpdateRequest, attempted: Attempted[ApiOutcome]) -> RowResult:
    if attempted.value is None:
        # every attempt went out and none was answered usably: any of them may have applied
        error = attempted.error
        return unsettled(
            request,
            http_status=getattr(error, "http_status", None),
            error_code=getattr(error, "error_code", None),
            error_message=str(error) if error else None,
            attempts=attempted.attempts,
        )
    outcome = attempted.value
    if outcome.status is Status.UPDATED and (
        outcome.user is None or not request.held_by(outcome.user, lenient=True)
    ):
        return result_for(
            request,
            status=Status.FAILED,
            reason=Reason.ANSWER_MISMATCH,
            http_status=outcome.http_status,
            error_message=mismatch(request, outcome.user, "answered with"),
            attempts=attempted.attempts,
            **user_fields(outcome.user),
        )
    return result_for(
        request,
        status=outcome.status,
        reason=outcome.reason or request.change_reason,
        http_status=outcome.http_status,
        error_code=outcome.error_code,
        error_message=outcome.error_message,
        attempts=attempted.attempts,
        **user_fields(outcome.user),
    )
