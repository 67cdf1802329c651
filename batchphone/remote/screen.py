"""The screen: spend calls only where they change something, judged on the users' state.

``Screen`` sits between the row rules and the senders. For each batch of rows it

1. reads the users (``compare``: every ``run`` unless ``--no-lookup``, ``plan``, ``undo``), 100
   per search: a row whose user already has that phone and verified flag ends ``unchanged`` (a
   row without a verified value only needs the same phone: it never changes the flag by
   itself), a login id nobody has ends ``not_found``, and (undo) a user whose phone is no
   longer the one the run set ends ``skipped``/``CHANGED_SINCE``; every other row keeps the
   user's state as its before-image (same phone, other flag: ``VERIFIED_ONLY``). Phones are
   compared in E.164 (``as_e164``): a stored phone in a legacy format (``+1 646 300 0000``) is
   the same number, sent in E.164 with the user's flag (``REFORMATTED``), and never sent back
   (undo: ``unchanged``/``SAME_NUMBER``);
2. checks the new phones (``guard``: always before a batch patch, which has no
   ``failOnConflict``): a phone that is another user's login id ends ``conflict`` unsent, since
   Descope would merge the two users. Rows wait until 1000 phones are pending (or the batch
   ends), so a check costs about one search per 1000 changes, not one per 100 rows;
3. hands on what is left: to the senders, or (``plan``) as ``change`` rows.

Row results the screen makes carry the user it read; nothing here sends an update.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import dataclass, replace

from batchphone.errors import FatalRemoteError
from batchphone.models import (
    LOOKUP_COLUMNS,
    PLAN_COLUMNS,
    PhoneState,
    Reason,
    RowResult,
    Status,
    UpdateRequest,
    User,
)
from batchphone.remote.lookup import (
    OWNER_IDS,
    PAGE,
    Lookup,
    LookupFailed,
    ReadFailure,
    owner_checks,
)
from batchphone.remote.stop import Stop
from batchphone.rows.normalize import E164_PATTERN, normalize
from batchphone.rows.prepare import (
    EXPLANATIONS,
    Prepared,
    UserFields,
    result_for,
    unsettled,
    user_fields,
)

__all__ = [
    "Screen",
    "ScreenRules",
    "as_e164",
    "budget_seconds",
    "planned_calls",
    "target_verified",
]


@dataclass(frozen=True, slots=True)
class ScreenRules:
    """Which reads the screen makes, and whether anything may be sent afterwards."""

    compare: bool = False  # read each user: before-image, unchanged, not_found, changed since
    guard: bool = False  # refuse a phone that is another user's login id
    plan: bool = False  # send nothing: rows that would be sent end as `change`

    @property
    def active(self) -> bool:
        """True when the screen makes any read at all."""
        return self.compare or self.guard

    @property
    def columns(self) -> tuple[str, ...]:
        """The result columns the screen adds: before-images when it read the users, and (plan)
        the verified flag a run would send."""
        columns = LOOKUP_COLUMNS if self.compare else ()
        return columns + PLAN_COLUMNS if self.plan else columns


def target_verified(request: UpdateRequest) -> bool:
    """The ``verifiedPhone`` the user has after ``request`` (what is sent as ``verified``).

    The API stores ``null`` as false (descope-api.md: the Go SDK sends false, the protobuf
    default), and a removed phone is never verified.
    """
    return request.verified_sent


def as_e164(phone: str) -> str:
    """``phone`` in E.164 when the normalizer reads it as a number with its country code (a
    phone stored in a legacy format: ``+1 (646) 300-0000``), else ``phone`` as it is.

    Phones are compared in this form; a legacy form is never sent (descope-api.md).
    """
    if not phone or E164_PATTERN.match(phone):
        return phone  # what the normalizer gives back too, and the shape of nearly every phone
    return normalize(phone, None).e164 or phone


def _unchanged(before: PhoneState, request: UpdateRequest) -> bool:
    """True when sending ``request`` would change nothing the row asks for.

    A row without a verified value (``None``) asks for a phone only: sending it would
    un-verify a phone the user verified, so the same phone is enough to leave it alone. The
    phone compared is the one sent (E.164): a user whose stored phone is the same number in a
    legacy form is not unchanged (sending stores it in E.164), and an undo whose before-image
    is such a form finds it unchanged when the user holds the number in E.164.
    """
    if before.phone != as_e164(request.phone):
        return False
    return request.verified is None or before.verified == target_verified(request)


def _as_sent(request: UpdateRequest, before: PhoneState) -> UpdateRequest:
    """``request`` as it is sent: its phone in E.164; for a user whose stored phone is this
    number in another format, with the user's verified flag (the same number keeps its flag)
    unless the row gives one, which wins."""
    phone = as_e164(request.phone)
    verified = request.verified
    if verified is None and before.phone != phone and before.e164 == phone:
        verified = before.verified
    if phone == request.phone and verified == request.verified:
        return request
    return replace(request, phone=phone, verified=verified)


def _unchanged_result(request: UpdateRequest, before: PhoneState, found: UserFields) -> RowResult:
    if request.phone == before.phone:
        return result_for(request, status=Status.UNCHANGED, **found)
    # an undo whose before-image is the number the user holds, in a legacy form: not sent back
    same = replace(request, phone=before.phone)
    return _ended(
        same, Status.UNCHANGED, Reason.SAME_NUMBER, EXPLANATIONS[Reason.SAME_NUMBER], found
    )


def _state(user: User) -> PhoneState:
    return PhoneState(
        phone=user.phone, verified=user.verified, user_id=user.user_id, e164=as_e164(user.phone)
    )


def _same_user(owner: User, request: UpdateRequest) -> bool:
    """True when the owner of the phone is the row's own user (its phone is its login id)."""
    if request.before is not None and request.before.user_id is not None:
        return owner.user_id == request.before.user_id
    return request.login_id in owner.login_ids or owner.user_id == request.login_id


def _ended(
    request: UpdateRequest,
    status: Status,
    reason: Reason,
    message: str,
    found: UserFields | None = None,
) -> RowResult:
    """A row the screen ends unsent, and why (with the user it read, when there is one)."""
    return result_for(request, status=status, reason=reason, error_message=message, **(found or {}))


def _judge(request: UpdateRequest, user: User | None) -> RowResult | UpdateRequest:
    """What the user's state says of ``request``: a result, or the request to send (with the
    user's state as its before-image, its phone in E.164)."""
    if user is None:
        return _ended(request, Status.NOT_FOUND, Reason.USER_NOT_FOUND, "no user has this login id")
    before = _state(user)
    found = user_fields(user)
    if request.prior is not None and request.held_by(user):
        # an earlier call of this run (answer lost, or a kill) changed the user: its
        # journaled before-image is the one to restore, not the state read now
        confirmed = replace(request, before=request.prior)
        return result_for(
            confirmed, status=Status.UPDATED, reason=Reason.CONFIRMED_BY_READ, **found
        )
    request = replace(request, before=before)
    if _unchanged(before, request):
        return _unchanged_result(request, before, found)
    if request.expect_phone is not None and before.phone != request.expect_phone:
        message = (
            f"the user's phone is now {before.phone or '(none)'}, not the "
            f"{request.expect_phone or '(none)'} the run set: left as is"
        )
        return _ended(request, Status.SKIPPED, Reason.CHANGED_SINCE, message, found)
    return _as_sent(request, before)


class Screen:
    """Judges update requests against the users' current state, batch by batch.

    Once ``stop`` is requested, rows not judged yet end ``not_attempted`` (never unjudged: a
    batch patch must not skip the phone check). The reads go through the run's call stack,
    which stops the run on a 401/403 and counts a read that failed for good in the circuit:
    the screen only turns what a read said into results.
    """

    def __init__(self, rules: ScreenRules, lookup: Lookup, *, stop: Stop) -> None:
        self.rules = rules
        self.lookup = lookup
        self.stop = stop

    async def screen(self, items: Iterable[Prepared]) -> AsyncGenerator[Prepared, None]:
        """Yield every item of ``items`` once: judged results, or requests still to send.

        Results come out as soon as they are known, so the senders start on a batch while
        the rest of it is still being read.
        """
        chunk: list[UpdateRequest] = []
        waiting: list[UpdateRequest] = []  # read, and waiting for the phone check
        for item in items:
            if isinstance(item, RowResult):
                yield item
                continue
            chunk.append(item)
            if len(chunk) == PAGE:
                for out in await self._read(chunk, waiting):
                    yield out
                chunk = []
            while len(waiting) >= OWNER_IDS:
                for out in await self._check(waiting[:OWNER_IDS]):
                    yield out
                del waiting[:OWNER_IDS]
        if chunk:
            for out in await self._read(chunk, waiting):
                yield out
        if waiting:
            for out in await self._check(waiting):
                yield out

    async def _read(
        self, chunk: list[UpdateRequest], waiting: list[UpdateRequest]
    ) -> list[Prepared]:
        """Judge a chunk by its users; requests that need the phone check go to ``waiting``."""
        if not self.rules.compare:
            return self._hand_on(chunk, waiting)
        users = await self._users([r.login_id for r in chunk], chunk)
        if isinstance(users, list):
            return users
        out: list[Prepared] = []
        sendable: list[UpdateRequest] = []
        for request in chunk:
            judged = _judge(request, users.get(request.login_id))
            if isinstance(judged, RowResult):
                out.append(judged)
            else:
                sendable.append(judged)
        return out + self._hand_on(sendable, waiting)

    def _hand_on(
        self, requests: list[UpdateRequest], waiting: list[UpdateRequest]
    ) -> list[Prepared]:
        if not self.rules.guard:
            return [self._ready(r) for r in requests]
        out: list[Prepared] = []
        for request in requests:
            # removing a phone cannot collide with anyone's login id
            if request.phone:
                waiting.append(request)
            else:
                out.append(self._ready(request))
        return out

    async def _check(self, requests: list[UpdateRequest]) -> list[Prepared]:
        """Refuse the requests whose new phone is another user's login id."""
        owners = await self._users([r.phone for r in requests], requests, owners=True)
        if isinstance(owners, list):
            return owners
        out: list[Prepared] = []
        for request in requests:
            owner = owners.get(request.phone)
            if owner is None or _same_user(owner, request):
                out.append(self._ready(request))
                continue
            message = (
                f"{request.phone} is the login id of another user ({owner.user_id}): "
                "not sent, Descope would merge the two users"
            )
            out.append(_ended(request, Status.CONFLICT, Reason.PHONE_CONFLICT, message))
        return out

    async def _users(
        self, login_ids: list[str], requests: list[UpdateRequest], *, owners: bool = False
    ) -> dict[str, User] | list[Prepared]:
        """The users by login id, or the requests' results when they cannot be read."""
        if self.stop.reason is None:
            try:
                if owners:
                    return await self.lookup.owners(login_ids)
                return await self.lookup.by_login_id(login_ids)
            except FatalRemoteError:
                pass  # the stack has stopped the run
            except LookupFailed as exc:
                if exc.failure is not None:
                    return [_read_failed(r, exc.failure) for r in requests]
        # stopping (a signal, a fatal answer, a cancelled read): these rows stay unsent
        reason = self.stop.reason or Reason.INTERRUPTED
        return [_unsent(r, reason) for r in requests]

    def _ready(self, request: UpdateRequest) -> Prepared:
        if not self.rules.plan:
            return request
        result = result_for(request, status=Status.CHANGE, reason=request.change_reason)
        # the flag the run would send with the phone: a row without one sends false
        return replace(result, extra={**result.extra, "verified": target_verified(request)})


def _unsent(request: UpdateRequest, reason: Reason) -> RowResult:
    """A row the screen did not judge because the run is stopping: ``not_attempted``, or, if
    an earlier call may have changed its user, still ``unsettled`` with that call's image."""
    if request.prior is not None:
        return unsettled(replace(request, before=request.prior))
    return result_for(request, status=Status.NOT_ATTEMPTED, reason=reason)


def _read_failed(request: UpdateRequest, failure: ReadFailure) -> RowResult:
    """The result of a row whose user could not be read: ``failed``, as the read ended (or
    ``unsettled`` still, when an earlier call may have changed the user)."""
    if request.prior is not None:
        prior = replace(request, before=request.prior)
        return unsettled(prior, error_message=failure.error_message, attempts=failure.attempts)
    return result_for(
        request,
        status=Status.FAILED,
        reason=failure.reason,
        http_status=failure.http_status,
        error_code=failure.error_code,
        error_message=failure.error_message,
        attempts=failure.attempts,
    )


def planned_calls(counts: Mapping[str, int], *, batch_size: int | None) -> int:
    """API calls a ``run`` (with its lookups) needs for rows judged as in ``counts``.

    One search per 100 rows read, one phone check per 1000 rows that change (or would have,
    for conflicts), and one update per change, or one patch per ``batch_size`` changes.
    """
    changes = counts.get(Status.CHANGE.value, 0)
    judged = (Status.CHANGE, Status.UNCHANGED, Status.NOT_FOUND, Status.CONFLICT, Status.SKIPPED)
    read = sum(counts.get(status.value, 0) for status in judged)
    read += counts.get(Status.FAILED.value, 0)  # reads that failed are tried again
    checked = changes + counts.get(Status.CONFLICT.value, 0)
    sends = changes if batch_size is None else math.ceil(changes / batch_size)
    return math.ceil(read / PAGE) + owner_checks(checked) + sends


def budget_seconds(calls: int, rate_calls: int, window: float) -> float:
    """The least time ``calls`` take when at most ``rate_calls`` may start in any ``window``.

    The first ``rate_calls`` start at once; each further full budget waits one more window.
    """
    if calls <= rate_calls:
        return 0.0
    return ((calls - 1) // rate_calls) * window
