"""``run --api batch``: up to 100 updates per ``PATCH /v1/mgmt/user/patch/batch`` call.

At 500 calls a minute the budget, not the server, bounds a run: a call that carries 100 rows
moves 100 times as many. Patch has no ``failOnConflict``, so the screen checks every new phone
before it gets here (see ``plan``). What comes back:

* ``patchedUsers`` map to their rows by login id (or user id): ``updated``;
* a row in ``failedUsers``, or in neither list, is sent again on its own through
  ``update/phone`` with ``failOnConflict: true``, whose answer (``not_found``, ``conflict``,
  ``failed``/``REJECTED``, ...) is as exact as a per-row run's, so both modes end alike;
* a batch that fails as a whole (5xx, timeouts after every retry, or a 4xx) is retried by the
  retry policy, then split in halves tried once each (a bad entry is isolated in a few calls),
  and finally sent row by row.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

from batchphone.client import DescopeClient
from batchphone.errors import FatalRemoteError, RemoteError
from batchphone.logs import get_logger
from batchphone.models import Reason, RowResult, Status, UpdateRequest
from batchphone.plan import target_verified
from batchphone.prepare import result_for, user_fields
from batchphone.ratelimit import RateLimiter
from batchphone.retry import RetryPolicy, call_with_retry
from batchphone.stop import Stop, Stopped

__all__ = ["MAX_BATCH", "BatchSender", "patch_body"]

#: The largest batch descope-api.md assumes (the emulator refuses more).
MAX_BATCH = 100
#: Halvings of a failed batch before its rows go one by one (100 -> 50 -> 25 -> rows).
_SPLITS = 2

log = get_logger()


def patch_body(request: UpdateRequest) -> dict[str, Any]:
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


class BatchSender:
    """Sends update requests in batches; rows it cannot settle go through ``send_one``.

    ``send_one`` is the per-row sender of the run (it applies the run's stop, fatal and circuit
    rules itself); ``observe`` sees every result this sender settles on its own; ``stopped``
    returns the reason the run is stopping, if it is.
    """

    def __init__(
        self,
        client: DescopeClient,
        limiter: RateLimiter,
        policy: RetryPolicy,
        *,
        send_one: Callable[[UpdateRequest], Awaitable[RowResult]],
        stopped: Callable[[], Reason | None],
        observe: Callable[[RowResult], None] | None = None,
        on_rate_limited: Callable[[float], None] | None = None,
        stop: Stop | None = None,
        on_call: Callable[[float], None] | None = None,
    ) -> None:
        self.stop = stop
        self.on_call = on_call
        self.client = client
        self.limiter = limiter
        self.policy = policy
        self.send_one = send_one
        self.stopped = stopped
        self.observe = observe
        self.on_rate_limited = on_rate_limited
        #: 429s met by batch calls; batches that failed as a whole
        self.rate_limited = 0
        self.failed_batches = 0

    async def send(self, requests: Sequence[UpdateRequest]) -> list[RowResult]:
        """Update every row of ``requests``; one result per request, in the same order.

        Raises ``FatalRemoteError`` (401/403) for the caller to stop the run.
        """
        return await self._send(list(requests), depth=0)

    async def _send(self, requests: list[UpdateRequest], depth: int) -> list[RowResult]:
        reason = self.stopped()
        if reason is not None:
            return [result_for(r, status=Status.NOT_ATTEMPTED, reason=reason) for r in requests]
        # the whole batch gets the policy's retries; a half of a failed batch gets one try
        policy = self.policy if depth == 0 else replace(self.policy, max_attempts=1)
        bodies = [patch_body(r) for r in requests]
        call = functools.partial(self.client.patch_batch, bodies)
        error: RemoteError | None
        try:
            attempted = await call_with_retry(
                call,
                limiter=self.limiter,
                policy=policy,
                on_rate_limited=self.on_rate_limited,
                stop=self.stop,
                on_call=self.on_call,
            )
        except FatalRemoteError:
            raise
        except Stopped as stopped:  # this part only: rows settled before keep their results
            return [
                result_for(r, status=Status.NOT_ATTEMPTED, reason=stopped.reason) for r in requests
            ]
        except RemoteError as exc:  # a 4xx for the batch as a whole: no retry changes it
            answer, error, attempts = None, exc, 1
        else:
            self.rate_limited += attempted.rate_limited
            answer, error, attempts = attempted.value, attempted.error, attempted.attempts
        if error is None and answer is not None:
            return await self._settle(requests, answer, attempts)
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
            return [await self.send_one(r) for r in requests]
        half = (len(requests) + 1) // 2
        first = await self._send(requests[:half], depth + 1)
        return first + await self._send(requests[half:], depth + 1)

    async def _settle(
        self, requests: list[UpdateRequest], answer: dict[str, Any], attempts: int
    ) -> list[RowResult]:
        """Map the patched users to their rows; send the rest one by one."""
        by_id = {r.login_id: r for r in requests}
        done: dict[int, RowResult] = {}
        for user in answer.get("patchedUsers") or ():
            request = _request_of(user, by_id)
            if request is None or request.row in done:
                continue
            result = result_for(
                request,
                status=Status.UPDATED,
                reason=request.change_reason,
                http_status=200,
                attempts=attempts,
                **user_fields(user),
            )
            done[request.row] = result
            if self.observe is not None:
                self.observe(result)
        failures = {}
        for entry in answer.get("failedUsers") or ():
            request = _request_of(entry.get("user"), by_id) if isinstance(entry, dict) else None
            if request is not None:
                failures[request.row] = str(entry.get("failure") or "")
        for request in requests:
            if request.row not in done:
                # the per-row call with failOnConflict says exactly what is wrong (or succeeds)
                log.info(
                    "batch_row_resent",
                    row=request.row,
                    in_failed_users=request.row in failures,
                )
                done[request.row] = await self.send_one(request)
        return [done[r.row] for r in requests]


def _request_of(user: Any, by_id: dict[str, UpdateRequest]) -> UpdateRequest | None:
    """The request a user of the answer stands for: by any of its login ids, or its user id."""
    if not isinstance(user, dict):
        return None
    for login_id in user.get("loginIds") or ():
        if isinstance(login_id, str) and login_id in by_id:
            return by_id[login_id]
    user_id = user.get("userId")
    return by_id.get(user_id) if isinstance(user_id, str) else None
