"""Reads of users' current state, batched and paced by the run's limiter like every update.

A run that compares before it sends (every ``run`` but ``--no-lookup``, ``plan``, ``undo``) reads
users with ``POST /v2/mgmt/user/search`` by ``loginIds``, 100 ids per call: a call per 100 rows
instead of a call per row. The same search finds the owners of new phones (a phone that is
another user's login id is the case where Descope merges users); since few phones are anyone's
login id, that search asks for up to 1000 phones at once and pages through the (usually empty)
answer. How many filter values the API takes is not published: should it refuse a long list, the
run asks for 100 at a time from then on. ``--canary`` reads single users back with
``GET /v1/mgmt/user``. Every read goes through the run's call stack (``remote.calls``), so
reads and updates share one stop, one budget and one circuit breaker, and a 429 pauses them all.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

from batchphone.errors import FatalRemoteError, RemoteError
from batchphone.logs import get_logger
from batchphone.models import Reason, User
from batchphone.remote.calls import Calls, failures_only
from batchphone.remote.client import DescopeClient
from batchphone.remote.stop import Stopped

__all__ = ["OWNER_IDS", "PAGE", "Lookup", "LookupFailed", "ReadFailure", "owner_checks"]

T = TypeVar("T")

#: Ids per search and users per page: descope-api.md assumes 100 is the largest page, and with
#: at most 100 ids a page can never overflow (one id names at most one user).
PAGE = 100
#: Phones per owner check: nearly all of them are nobody's login id, so the answer is one page.
OWNER_IDS = 1000

log = get_logger()


def owner_checks(phones: int) -> int:
    """Searches needed to check ``phones`` phones when few of them are anyone's login id."""
    return math.ceil(phones / OWNER_IDS)


@dataclass(frozen=True, slots=True)
class ReadFailure:
    """A read that failed for good: the result fields of the rows it was for (``failed``)."""

    reason: Reason
    http_status: int | None
    error_code: str | None
    error_message: str
    attempts: int


class LookupFailed(Exception):
    """A read gave no usable answer.

    ``failure`` says why, for the rows it was for; ``None`` means the run is stopping and the
    rows stay unsent.
    """

    def __init__(self, failure: ReadFailure | None) -> None:
        super().__init__(failure.error_message if failure is not None else "stopped")
        self.failure = failure


class Lookup:
    """Batched user reads of one run, through the run's call stack."""

    def __init__(self, calls: Calls) -> None:
        # every read goes through the run's stack: its stop, circuit, retries and budget
        self.calls = calls
        #: reads that got a usable answer
        self.answered = 0
        self._owner_ids = OWNER_IDS

    async def by_login_id(self, login_ids: Iterable[str]) -> dict[str, User]:
        """The users that have one of ``login_ids`` as a login id, keyed by that id.

        Ids nobody has are simply absent. One search per 100 distinct ids; raises
        ``LookupFailed`` (the rows of these ids cannot be judged) or ``FatalRemoteError``.
        """
        wanted = list(dict.fromkeys(login_ids))
        found: dict[str, User] = {}
        for start in range(0, len(wanted), PAGE):
            found |= await self._owned(wanted[start : start + PAGE])
        return found

    async def owners(self, phones: Iterable[str]) -> dict[str, User]:
        """The users whose login id is one of ``phones``, keyed by that phone.

        Like ``by_login_id``, but up to 1000 phones per search (see the module docstring).
        """
        wanted = list(dict.fromkeys(phones))
        found: dict[str, User] = {}
        start = 0
        while start < len(wanted):
            chunk = wanted[start : start + self._owner_ids]
            try:
                found |= await self._owned(chunk)
            except LookupFailed as exc:
                refused = exc.failure is not None and exc.failure.reason is Reason.REJECTED
                if not refused or len(chunk) <= PAGE:
                    raise
                log.warning("long_search_refused", ids=len(chunk), now=PAGE)
                self._owner_ids = PAGE
                continue
            start += len(chunk)
        return found

    async def _owned(self, chunk: list[str]) -> dict[str, User]:
        names = set(chunk)
        found: dict[str, User] = {}
        for user in await self._search(chunk):
            for login_id in user.login_ids:
                if login_id in names:
                    found[login_id] = user
        return found

    async def read_back(self, login_id: str) -> User | None:
        """``GET /v1/mgmt/user``: the user as stored now, or ``None`` when there is none."""
        user: User | None = await self._call(lambda client: client.load_user(login_id))
        return user

    async def _search(self, login_ids: Sequence[str]) -> list[User]:
        asked = {login_id.casefold() for login_id in login_ids}
        # n ids name at most n users, so a server that applies the filter needs at most
        # ceil(n / PAGE) pages; one that ignores it would be paged through the whole project
        pages = max(1, math.ceil(len(asked) / PAGE))
        users: list[User] = []
        for page in range(pages):
            found, total = await self._call(_search_page(login_ids, page))
            if total > len(asked):
                raise self._ignored("total", f"a total of {total} users for {len(asked)} login ids")
            strangers = sum(1 for user in found if not _named(user, asked))
            if strangers:
                raise self._ignored("users", f"{strangers} users with none of the login ids asked")
            users.extend(found)
            if len(found) < PAGE or len(users) >= total:
                return users
        # not reached while the checks above hold (full pages fill the total): the bound stays
        raise self._ignored("pages", f"more than {pages} full pages for {len(asked)} login ids")

    def _ignored(self, sign: str, what: str) -> FatalRemoteError:
        """Stop the run: a search answered without its filter cannot tell who exists."""
        log.error("search_filter_ignored", sign=sign)
        error = FatalRemoteError(
            f"search users: the server ignored the login id filter ({what}): its answers "
            "cannot be trusted; the run stopped (check base_url=...)"
        )
        self.calls.stop.request(Reason.STOPPED, fatal=error)
        return error

    async def _call(self, endpoint: Callable[[DescopeClient], Awaitable[T]]) -> T:
        try:
            # a read that works does not count in the circuit; one that fails for good does
            attempted = await self.calls(endpoint, verdicts=failures_only)
        except FatalRemoteError:
            raise
        except RemoteError as exc:  # a 4xx no retry can change
            raise LookupFailed(_failure(Reason.REJECTED, exc, attempts=1)) from None
        except Stopped:
            raise LookupFailed(None) from None
        if attempted.error is not None:
            failure = _failure(Reason.RETRIES_EXHAUSTED, attempted.error, attempted.attempts)
            raise LookupFailed(failure)
        self.answered += 1
        return cast(T, attempted.value)  # no error: the value is the call's answer


def _named(user: User, asked: set[str]) -> bool:
    """Whether ``user`` is one a search for ``asked`` (casefolded) may return: one of its
    login ids (or its user id, which a server may match too) is asked, in any case."""
    names = (*user.login_ids, *((user.user_id,) if user.user_id else ()))
    return any(name.casefold() in asked for name in names)


def _search_page(
    login_ids: Sequence[str], page: int
) -> Callable[[DescopeClient], Awaitable[tuple[list[User], int]]]:
    def search(client: DescopeClient) -> Awaitable[tuple[list[User], int]]:
        return client.search_users(login_ids, page=page, limit=PAGE)

    return search


def _failure(reason: Reason, error: RemoteError, attempts: int) -> ReadFailure:
    return ReadFailure(
        reason=reason,
        http_status=error.http_status,
        error_code=error.error_code,
        error_message=f"lookup failed: {error.message}",
        attempts=attempts,
    )
