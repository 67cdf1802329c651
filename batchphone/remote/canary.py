"""``run --canary N``: send the first N updates, read each user back, go on only if all stuck.

A 200 says the API accepted an update, not that the user now has the phone: a proxy that
answers for the API, a rule in the project, or a field the API ignores would all show up only
later, across the whole file. The canary catches them after N rows: it reads each updated user
back with ``GET /v1/mgmt/user`` (through the run's limiter, so the reads count in the budget)
and compares the stored phone and verified flag with what was sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from batchphone.errors import FatalRemoteError
from batchphone.models import Reason, RowResult, Status, UpdateRequest, User
from batchphone.remote.lookup import LookupFailed
from batchphone.remote.screen import target_verified
from batchphone.rows.prepare import result_for, user_fields

__all__ = ["Canary", "mismatch"]

ReadBack = Callable[[str], Awaitable["User | None"]]


def _flag(value: object) -> str:
    return "null" if value is None else str(bool(value)).lower()


def mismatch(request: UpdateRequest, user: User | None, seen: str = "read back") -> str | None:
    """What differs between what ``request`` sent and the user as read back (``None``: same).

    Every update sends its verified flag explicitly (false for a row without a value: that is
    what the API stores), so the stored flag must be the one sent, whatever the row said.
    ``seen`` says where the user came from ("read back", "answered with").
    """
    where = f"row {request.line or request.row} ({request.login_id})"
    if user is None:
        return f"{where}: the user was not found when {seen}"
    phone, stored = user.phone, user.verified
    if phone == request.phone and stored == target_verified(request):
        return None
    return (
        f"{where}: sent phone {request.phone or '(none)'} "
        f"verified {_flag(target_verified(request))}, "
        f"{seen} phone {phone or '(none)'} verifiedPhone {_flag(stored)}"
    )


class Canary:
    """The first ``size`` requests a run sends, and their results as they come in."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, not {size}")
        self.size = size
        self.sent: dict[int, UpdateRequest] = {}
        self.results: dict[int, RowResult] = {}
        self.checked = False
        #: rows whose read back failed: not known to have missed (the stop says so apart)
        self.unread: set[int] = set()
        self._arrived: anyio.Event | None = None

    @property
    def admitting(self) -> bool:
        """True while requests still join the canary."""
        return not self.checked and len(self.sent) < self.size

    def admit(self, request: UpdateRequest) -> bool:
        """Count ``request`` as sent; True when it filled the canary (time to check)."""
        if not self.admitting:
            return False
        self.sent[request.row] = request
        return len(self.sent) == self.size

    def observe(self, result: RowResult) -> None:
        """Note a finished row; results of canary rows wake ``wait``."""
        if result.row in self.sent and not self.checked:
            self.results[result.row] = result
            if self._arrived is not None:
                self._arrived.set()

    async def wait(self) -> None:
        """Return once every canary row has its result."""
        while len(self.results) < len(self.sent):
            self._arrived = anyio.Event()
            await self._arrived.wait()

    async def check(self, read_back: ReadBack) -> list[RowResult]:
        """Read back every updated canary row; the rows that did not stick, as ``failed``.

        Rows that ended otherwise (``conflict``, ``not_found``, ``failed``) say so already and
        are not read. A read that fails counts as a mismatch: nothing proves the update stuck.
        A 401/403 (the call stack has stopped the run) or a stop ends the check with no verdict
        on the rows not read yet.
        """
        self.checked = True
        bad: list[RowResult] = []
        for row in sorted(self.sent):
            request, result = self.sent[row], self.results.get(row)
            if result is None or result.status is not Status.UPDATED:
                continue
            try:
                user = await read_back(request.login_id)
            except FatalRemoteError:
                return bad
            except LookupFailed as exc:
                if exc.failure is None:  # the run is stopping: no verdict
                    return bad
                problem: str | None = f"row {request.line or row} ({request.login_id}): {exc}"
                user = None
                self.unread.add(row)
            else:
                problem = mismatch(request, user)
            if problem is not None:
                bad.append(
                    result_for(
                        request,
                        status=Status.FAILED,
                        reason=Reason.CANARY_MISMATCH,
                        error_message=problem,
                        attempts=result.attempts,
                        **user_fields(user),
                    )
                )
        return bad
