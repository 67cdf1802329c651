"""``run --api batch``: up to 100 updates per ``PATCH /v1/mgmt/user/patch/batch`` call.

At 500 calls a minute the budget, not the server, bounds a run: a call that carries 100 rows
moves 100 times as many. Patch has no ``failOnConflict``, so the screen checks every new phone
before it gets here (see ``plan``). What comes back:

* ``patchedUsers`` map to their rows by login id (or user id): ``updated``;
* a row in ``failedUsers``, or in neither list, is handed back to the caller, which sends it
  on its own through ``update/phone`` with ``failOnConflict: true``, whose answer
  (``not_found``, ``conflict``, ``failed``/``REJECTED``, ...) is as exact as a per-row
  run's, so both modes end alike;
* a batch that fails as a whole (5xx, timeouts after every retry, or a 4xx) is retried by the
  retry policy, then split in halves tried once each (a bad entry is isolated in a few calls),
  and finally handed back to be sent row by row;
* a patched user that does not hold what was sent is handed back too (the per-row answer
  says what became of it).

Every patch is journaled before it leaves (``intend``), and a patch that a stop cut off on the
wire leaves its rows ``unsettled``: it may have been applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from batchphone.errors import FatalRemoteError, RemoteError
from batchphone.logs import get_logger
from batchphone.models import RowResult, Status, UpdateRequest, User
from batchphone.remote.answers import PatchAnswer
from batchphone.remote.calls import Calls, failure_label
from batchphone.remote.client import UserPatch
from batchphone.remote.retry import Attempted
from batchphone.remote.screen import target_verified
from batchphone.remote.stop import Stopped
from batchphone.rows.prepare import Intend, result_for, unsettled, user_fields

__all__ = ["MAX_BATCH", "BatchSender", "Batched", "patch_body"]

#: The largest batch descope-api.md assumes (the emulator refuses more).
MAX_BATCH = 100
#: Halvings of a failed batch before its rows go one by one (100 -> 50 -> 25 -> rows).
_SPLITS = 2

log = get_logger()


def patch_body(request: UpdateRequest) -> UserPatch:
    """The patch of one row: the phone, and the verified flag ``update/phone`` would store.

    ``verifiedPhone`` is always sent, false for a row without a verified value: a patch leaves
    fields it is not given alone, and a new phone must never inherit the old phone's verified
    flag. A row without a value whose phone is the user's own never gets here: the screen
    (which every batch run has) ends it ``unchanged``, so its flag is kept.
    """
    return {
        "loginId": request.login_id,
        "phone": request.phone,
        "verifiedPhone": target_verified(request),
    }


@dataclass(frozen=True, slots=True)
class Batched:
    """What a batch settled, and the rows it leaves to the per-row path (``update/phone``)."""

    settled: list[RowResult]
    resend: list[UpdateRequest]


def _batch_verdicts(attempted: Attempted[PatchAnswer]) -> list[str | None]:
    """The circuit counts each row a patch settled (a row sent on later counts then); a batch
    that failed as a whole counts once."""
    if attempted.error is not None:
        return [failure_label(attempted.error)]
    return [None] * len(attempted.value.patched if attempted.value is not None else ())


class BatchSender:
    """Sends update requests in batches through the run's call stack.

    It never sends a row on its own: rows no patch settled come back in ``Batched.resend``, for
    the caller to send through the per-row path (which has the exact answers).
    """

    def __init__(self, calls: Calls, *, intend: Intend | None = None) -> None:
        self.calls = calls
        self.intend = intend
        #: batches that failed as a whole
        self.failed_batches = 0

    async def send(self, requests: Sequence[UpdateRequest]) -> Batched:
        """Patch every row of ``requests``; the results it settled and the rows to send on.

        Rows the run's stop left unsent are settled ``not_attempted``. Raises
        ``FatalRemoteError`` (401/403: the stack has stopped the run already).
        """
        settled: list[RowResult] = []
        resend: list[UpdateRequest] = []
        await self._send(list(requests), 0, settled, resend)
        return Batched(settled=settled, resend=resend)

    async def _send(
        self,
        requests: list[UpdateRequest],
        depth: int,
        settled: list[RowResult],
        resend: list[UpdateRequest],
    ) -> None:
        # the whole batch gets the policy's retries; a half of a failed batch gets one try
        policy = self.calls.policy if depth == 0 else replace(self.calls.policy, max_attempts=1)
        bodies = [patch_body(r) for r in requests]
        error: RemoteError | None
        intend = self.intend
        try:
            attempted = await self.calls(
                lambda client: client.patch_batch(bodies),
                verdicts=_batch_verdicts,
                policy=policy,
                ahead=(lambda: intend(requests)) if intend is not None else None,
            )
        except FatalRemoteError:
            raise
        except Stopped as stopped:  # this part only: rows settled before keep their results
            if stopped.maybe_applied:
                note = "the run stopped with the patch in flight"
                settled.extend(unsettled(r, error_message=note) for r in requests)
            else:
                settled.extend(
                    result_for(r, status=Status.NOT_ATTEMPTED, reason=stopped.reason)
                    for r in requests
                )
            return
        except RemoteError as exc:  # a 4xx for the batch as a whole: no retry changes it
            answer, error, attempts = None, exc, 1
        else:
            answer, error, attempts = attempted.value, attempted.error, attempted.attempts
        if error is None and answer is not None:
            self._settle(requests, answer, attempts, settled, resend)
            return
        self.failed_batches += 1
        # no API text in logs: it may echo a login id or a phone (the result file keeps it)
        log.warning(
            "batch_failed",
            rows=len(requests),
            depth=depth,
            http_status=getattr(error, "http_status", None),
            error_code=getattr(error, "error_code", None),
        )
        if depth >= _SPLITS or len(requests) == 1:
            resend.extend(requests)
            return
        half = (len(requests) + 1) // 2
        await self._send(requests[:half], depth + 1, settled, resend)
        await self._send(requests[half:], depth + 1, settled, resend)

    def _settle(
        self,
        requests: list[UpdateRequest],
        answer: PatchAnswer,
        attempts: int,
        settled: list[RowResult],
        resend: list[UpdateRequest],
    ) -> None:
        """Map the patched users to their rows; the rest go on to the per-row path."""
        by_id = {r.login_id: r for r in requests}
        done: set[int] = set()
        for user in answer.patched:
            request = _request_of(user, by_id)
            if request is None or request.row in done:
                continue
            if not request.held_by(user, lenient=True):
                continue  # a 200 that shows no change: the per-row call says what happened
            done.add(request.row)
            settled.append(
                result_for(
                    request,
                    status=Status.UPDATED,
                    reason=request.change_reason,
                    http_status=200,
                    attempts=attempts,
                    **user_fields(user),
                )
            )
        failures = set()
        for failed in answer.failed:
            request = _request_of(failed, by_id) if failed is not None else None
            if request is not None:
                failures.add(request.row)
        for request in requests:
            if request.row not in done:
                # the per-row call with failOnConflict says exactly what is wrong (or succeeds)
                log.info(
                    "batch_row_resent", row=request.row, in_failed_users=request.row in failures
                )
                resend.append(request)


def _request_of(user: User, by_id: dict[str, UpdateRequest]) -> UpdateRequest | None:
    """The request a user of the answer stands for: by any of its login ids, or its user id."""
    for login_id in user.login_ids:
        if login_id in by_id:
            return by_id[login_id]
    return by_id.get(user.user_id) if user.user_id is not None else None
