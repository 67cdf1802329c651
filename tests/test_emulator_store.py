"""The user store's indexes, apart from the endpoints that use them (those: test_emulator.py)."""

from __future__ import annotations

import pytest

from batchphone.emulator.contract import ApiError
from batchphone.emulator.store import Merge, UserStore


def _store() -> UserStore:
    return UserStore(
        [
            {"loginId": "a@example.com", "phone": "+14155550100"},
            {"loginId": "+14155550199", "phone": "+14155550100"},  # a phone that is a login id
            {"loginIds": ["c@example.com", "c2@example.com"]},
        ]
    )


def test_a_seed_naming_a_login_id_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="appears twice"):
        UserStore([{"loginId": "a@example.com"}, {"loginId": "a@example.com"}])


def test_lookups_by_login_id_user_id_and_phone() -> None:
    store = _store()
    c = store.require("c2@example.com")
    assert store.find(c["userId"]) is c and store.by_user_id(c["userId"]) is c
    assert store.by_login_id(c["userId"]) is None  # a user id is not a login id
    holders = store.candidates(set(), set(), {"+14155550100"})
    assert [u["loginIds"][0] for u in holders] == ["a@example.com", "+14155550199"]
    assert len(store.candidates(set(), set(), set())) == len(store) == 3
    with pytest.raises(ApiError) as raised:
        store.require("nobody@example.com")
    assert raised.value.status == 404


def test_a_new_phone_moves_in_the_phone_index() -> None:
    store = _store()
    a = store.require("a@example.com")
    store.set_phone(a, "+14155550111")
    assert [u["loginIds"][0] for u in store.candidates(set(), set(), {"+14155550100"})] == [
        "+14155550199"
    ]
    assert store.candidates(set(), set(), {"+14155550111"}) == [a]
    store.set_phone(a, "")
    assert store.candidates(set(), set(), {"+14155550111"}) == []


def test_a_merge_deletes_the_other_user_from_every_index_and_is_recorded() -> None:
    store = _store()
    a = store.require("a@example.com")
    other = store.conflicting(a, "+14155550199")
    assert other is not None and store.conflicting(other, "+14155550199") is None
    store.merge("a@example.com", other)
    assert store.find("+14155550199") is None and store.by_user_id(other["userId"]) is None
    assert store.candidates(set(), set(), {"+14155550100"}) == [a]
    assert store.candidates({"+14155550199"}, set(), set()) == []
    assert store.merges == [Merge(login_id="a@example.com", deleted="+14155550199")]
    assert len(store) == 2 and store.conflicting(a, "+14155550199") is None
