"""Seed files, generated users and the full Descope user shape."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from batchphone.emulator import SeedFileError, complete_user, generate_users, load_users
from batchphone.emulator.contract import E164
from batchphone.errors import InputError


def test_the_sample_seed_file_loads(samples: Path) -> None:
    users = load_users(samples / "users.csv")
    assert len(users) == 22
    bob = users[1]
    assert bob["loginIds"] == ["bob@example.com"] and bob["name"] == "Bob Baker"
    assert (bob["phone"], bob["verifiedPhone"], bob["verifiedEmail"]) == (
        "+442079460000",
        True,
        True,
    )
    phone_login = next(u for u in users if u["loginIds"] == ["+14155550199"])
    assert phone_login["email"] == "" and phone_login["verifiedEmail"] is False
    assert len({u["userId"] for u in users}) == 22
    assert [u["createdTime"] for u in users[:2]] == [1_700_000_000, 1_700_000_001]


def test_the_sample_seed_file_matches_the_sample_input(samples: Path) -> None:
    seeded = {u["loginIds"][0] for u in load_users(samples / "users.csv")}
    with (samples / "phones.csv").open(encoding="utf-8") as handle:
        wanted = {row["loginId"] for row in csv.DictReader(handle)}
    # nobody@example.com is the sample's "user not found" row
    assert wanted - seeded == {"nobody@example.com"}


def test_json_seed_with_any_user_fields(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    seed = [
        {"loginIds": ["a@example.com", "+14155550100"], "roleNames": ["admin"]}
        | {"status": "disabled"},
        {"loginId": "b@example.com", "phone": "0207 946 0018", "verifiedPhone": False},
    ]
    path.write_text(json.dumps(seed), encoding="utf-8")
    a, b = load_users(path)
    assert a["loginIds"] == ["a@example.com", "+14155550100"]
    assert a["externalIds"] == a["loginIds"] and a["roleNames"] == ["admin"]
    assert a["status"] == "disabled"
    # a legacy, non-E.164 phone may be seeded: rehearsals meet real data
    assert (b["phone"], b["verifiedPhone"]) == ("0207 946 0018", False)


def test_csv_with_optional_columns(tmp_path: Path) -> None:
    path = tmp_path / "users.csv"
    path.write_text(
        "loginId,phone,verifiedPhone,test,status\na@example.com,+14155550100,false,true,invited\n",
        encoding="utf-8",
    )
    (user,) = load_users(path)
    assert (user["verifiedPhone"], user["test"], user["status"]) == (False, True, "invited")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("u.csv", "phone\n+14155550100\n", "needs a loginId column"),
        ("u.csv", "loginId,colour\na,red\n", "unknown column(s): colour"),
        ("u.csv", "loginId,phone\na,+1\n,+14155550100\n", "line 3: empty loginId"),
        ("u.csv", "loginId\na\nb\na\n", "line 4: 'a' is already used by line 2"),
        ("u.csv", "loginId,test\na,maybe\n", "line 2: test must be true or false, not 'maybe'"),
        ("u.csv", "loginId,status\na,asleep\n", "line 2: status 'asleep' is not one of"),
        ("u.csv", "loginId\na,b\n", "line 2: more cells than columns"),
        ("u.json", "[{", "not valid JSON"),
        ("u.json", '{"loginId": "a"}', "must hold a list of users"),
        ("u.json", '[{"loginId": "a"}, 3]', "item 2: not a JSON object"),
        ("u.json", '[{"name": "a"}]', "item 1: a user needs loginId"),
        ("u.json", '[{"loginId": "a", "verifiedPhone": "yes"}]', "item 1: verifiedPhone must be"),
    ],
)
def test_bad_seed_files_name_what_is_wrong(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SeedFileError) as caught:
        load_users(path)
    assert message in str(caught.value)
    # both an InputError for batchphone and a ValueError for plain callers
    assert isinstance(caught.value, InputError) and isinstance(caught.value, ValueError)
    assert caught.value.path == str(path)


def test_a_missing_seed_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        load_users(tmp_path / "absent.csv")


def test_generated_users_are_deterministic_under_the_seed() -> None:
    users = generate_users(50, seed=7)
    assert [u["loginIds"][0] for u in users[:2]] == ["user0@example.com", "user1@example.com"]
    assert users == generate_users(50, seed=7)
    assert users != generate_users(50, seed=8)
    phones = [u["phone"] for u in users if u["phone"]]
    assert 10 < len(phones) < 40
    assert all(E164.fullmatch(p) for p in phones)
    assert generate_users(0) == []
    with pytest.raises(ValueError):
        generate_users(-1)


def test_complete_user_needs_a_login_id_and_keeps_given_fields() -> None:
    with pytest.raises(ValueError, match="loginId"):
        complete_user({"name": "x"})
    with pytest.raises(ValueError, match="login id"):
        complete_user({"loginIds": ["a", ""]})
    user = complete_user({"loginId": "a", "createdTime": 5, "customAttributes": {"k": 1}})
    assert (user["createdTime"], user["customAttributes"]) == (5, {"k": 1})
    assert user["userId"].startswith("U") and len(user["userId"]) == 28
