"""Sending rows: what the pool's workers do with an update request (or a batch of them).

Every call goes through the run's call stack (``batchphone.calls``: stop -> circuit -> retry ->
limiter -> HTTP); this module only turns what the stack says into one result per row:

* ``RowSender.process``: one ``update/phone`` call per row (``--api update``);
* ``RowSender.process_batch``: one patch per batch (``--api batch``); the rows the batch could
  not settle come back from ``BatchSender`` and go through ``process`` here, one by one;
* ``fetch_license``: the license handshake, before any row.
"""

from __future__ import annotations

from batchphone.batch import BatchSender
from batchphone.calls import Calls, failure_label, fatal_reason
from batchphone.errors import FatalRemoteError
from batchphone.models import ApiOutcome, Reason, RowResult, Status, UpdateRequest
from batchphone.prepare import result_for, user_fields
from batchphone.retry import Attempted
from batchphone.stop import Stopped

__all__ = ["RowSender", "fetch_license", "not_attempted"]


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


class RowSender:
    """The pool's ``process`` functions: an update request (or a batch) in, results out."""

    def __init__(self, calls: Calls, batch: BatchSender | None = None) -> None:
        self.calls = calls
        self.batch = batch

    async def process(self, request: UpdateRequest) -> RowResult:
        """Send one row (``update/phone``, retried) and return its result."""
        try:
            attempted = await self.calls(
                lambda client: client.update_phone(request), verdicts=_update_verdicts
            )
        except FatalRemoteError as exc:
            return _unauthorized(request, exc)
        except Stopped as stopped:
            return not_attempted(request, stopped.reason)
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
        error = attempted.error
        return result_for(
            request,
            status=Status.FAILED,
            reason=Reason.RETRIES_EXHAUSTED,
            http_status=getattr(error, "http_status", None),
            error_code=getattr(error, "error_code", None),
            error_message=str(error) if error else None,
            attempts=attempted.attempts,
        )
    outcome = attempted.value
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
