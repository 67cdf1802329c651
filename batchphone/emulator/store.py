"""One project's users, indexed by login id, user id and phone, free of HTTP.

The store keeps its indexes true and nothing more: what a call may change, and the answers
the API gives, are the endpoints' (``writes.py``, ``reads.py``). Lookups go through the
indexes, so an update costs the same with ten users or a million.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from batchphone.emulator.contract import ApiError, Code
from batchphone.emulator.users import complete_user

__all__ = ["Merge", "UserStore"]


@dataclass(frozen=True, slots=True)
class Merge:
    """A merge the API did because ``failOnConflict`` was not true: ``deleted`` is gone."""

    login_id: str
    deleted: str


class UserStore:
    """The users of one project, indexed by login id, user id and phone."""

    def __init__(self, users: Iterable[Mapping[str, Any]]) -> None:
        """Index ``users`` (full or partial user dicts; ``ValueError`` if one is wrong)."""
        self._by_id: dict[str, dict[str, Any]] = {}  # insertion order = creation order
        self._by_login: dict[str, str] = {}
        self._by_phone: dict[str, set[str]] = {}
        self._order: dict[str, int] = {}
        self._sequence = itertools.count()
        #: the merges done so far, oldest first
        self.merges: list[Merge] = []
        for position, user in enumerate(users):
            # complete_user copies, and fills what a partial seed leaves out
            self._add(complete_user(user, position))

    def __len__(self) -> int:
        return len(self._by_id)

    def _add(self, user: dict[str, Any]) -> None:
        user_id = user["userId"]
        if user_id in self._by_id:
            raise ValueError(f"user id {user_id!r} appears twice")
        for login_id in user["loginIds"]:
            if login_id in self._by_login:
                raise ValueError(f"login id {login_id!r} appears twice")
            self._by_login[login_id] = user_id
        self._by_id[user_id] = user
        self._order[user_id] = next(self._sequence)
        self._index_phone(user, add=True)

    def _index_phone(self, user: dict[str, Any], *, add: bool) -> None:
        if not user["phone"]:
            return
        holders = self._by_phone.setdefault(user["phone"], set())
        if add:
            holders.add(user["userId"])
        else:
            holders.discard(user["userId"])
            if not holders:
                del self._by_phone[user["phone"]]

    # -- reads: the stored users themselves, not copies --------------------------------------

    def users(self) -> list[dict[str, Any]]:
        """Every stored user, in creation order."""
        return sorted(self._by_id.values(), key=lambda user: self._order[user["userId"]])

    def find(self, login_or_user_id: str) -> dict[str, Any] | None:
        """The stored user whose login id, else user id, this is."""
        user_id = self._by_login.get(login_or_user_id, login_or_user_id)
        return self._by_id.get(user_id)

    def require(self, login_id: str) -> dict[str, Any]:
        """The stored user :meth:`find` finds, or the API's 404."""
        user = self.find(login_id)
        if user is None:
            raise ApiError(404, Code.USER_NOT_FOUND, "User not found", f"{login_id} not found")
        return user

    def by_login_id(self, login_id: str) -> dict[str, Any] | None:
        """The stored user with this login id (a user id is not looked at)."""
        return self._by_id.get(self._by_login.get(login_id, ""))

    def by_user_id(self, user_id: str) -> dict[str, Any] | None:
        """The stored user with this user id."""
        return self._by_id.get(user_id)

    def conflicting(self, user: Mapping[str, Any], phone: str) -> dict[str, Any] | None:
        """Another user whose login id is ``phone`` (the one an update would merge)."""
        other_id = self._by_login.get(phone)
        return None if other_id is None or other_id == user["userId"] else self._by_id[other_id]

    def candidates(
        self, login_ids: set[str], user_ids: set[str], phones: set[str]
    ) -> list[dict[str, Any]]:
        """Users that may match filters on these (empty: no filter), in creation order: from an
        index when a filter allows it, else everyone."""
        ids: set[str] | None = None
        if login_ids:
            ids = {self._by_login[x] for x in login_ids if x in self._by_login}
        elif user_ids:
            ids = {x for x in user_ids if x in self._by_id}
        elif phones:
            ids = set().union(*(self._by_phone.get(p, ()) for p in phones))
        if ids is None:
            return list(self._by_id.values())
        # creation order, without scanning everyone
        return [self._by_id[i] for i in sorted(ids, key=self._order.__getitem__)]

    # -- writes: the indexes follow ------------------------------------------------------------

    def set_phone(self, user: dict[str, Any], phone: str) -> None:
        """Give a stored user ``phone`` ("": none)."""
        self._index_phone(user, add=False)
        user["phone"] = phone
        self._index_phone(user, add=True)

    def merge(self, login_id: str, other: dict[str, Any]) -> None:
        """Delete ``other``, as the API does when the user an update names (``login_id``, as
        named) takes ``other``'s login id as its phone."""
        self.merges.append(Merge(login_id=login_id, deleted=other["loginIds"][0]))
        self._index_phone(other, add=False)
        for login_id in other["loginIds"]:
            del self._by_login[login_id]
        del self._by_id[other["userId"]]
        del self._order[other["userId"]]
