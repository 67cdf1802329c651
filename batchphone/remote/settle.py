"""Settling rows whose call may have been applied: read the users back, 100 per search.

A call whose answer was lost (a timeout, a dropped connection, a 5xx, an unusable 200, after
every attempt; or a call a hard stop cut off on the wire) says nothing about whether the server
applied it (descope-api.md: "only a read of the user settles it"). Its rows come back
``unsettled``; before the run ends they are read back here:

* the user holds what the call sent: ``updated``/``CONFIRMED_BY_READ`` (the before-image read
  before the call stays, so undo restores it);
* it does not: the row is sent again (the update is idempotent), or, in the last round,
  ``failed``/``NOT_APPLIED``;
* the read itself fails, or the run is stopping: the row stays ``unsettled`` (its record is the
  one its call left) and the next run of the same command reads it again (see ``screen``,
  where a journaled before-image is the request's ``prior``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from batchphone.errors import FatalRemoteError
from batchphone.models import Reason, RowResult, Status, UpdateRequest
from batchphone.remote.canary import mismatch
from batchphone.remote.lookup import Lookup, LookupFailed
from batchphone.rows.prepare import result_for, user_fields

__all__ = ["Settled", "read_back"]


@dataclass(slots=True)
class Settled:
    """What a settle round decided: results, and the requests to send again."""

    results: list[RowResult] = field(default_factory=list)
    resend: list[UpdateRequest] = field(default_factory=list)


async def read_back(lookup: Lookup, requests: Sequence[UpdateRequest], *, last: bool) -> Settled:
    """Read the users of ``requests`` back and settle each row (``last``: send none again)."""
    settled = Settled()
    try:
        users = await lookup.by_login_id(r.login_id for r in requests)
    except (FatalRemoteError, LookupFailed):
        # a failed read, or the stack stopped the run: the rows keep the unsettled records
        # their calls left (attempts, the call's error); a new record would say 0 attempts
        return settled
    for request in requests:
        user = users.get(request.login_id)
        if user is not None and request.held_by(user):
            settled.results.append(
                result_for(
                    request,
                    status=Status.UPDATED,
                    reason=Reason.CONFIRMED_BY_READ,
                    **user_fields(user),
                )
            )
        elif last or user is None:
            settled.results.append(
                result_for(
                    request,
                    status=Status.FAILED,
                    reason=Reason.NOT_APPLIED,
                    error_message=mismatch(request, user),
                    **user_fields(user),
                )
            )
        else:
            settled.resend.append(request)
    return settled
