"""The emulator's endpoints, errors, auth and stats, in-process through its transport."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchphone.emulator import ASSUMED, Emulator, Merge, ProjectSettings, load_users

pytestmark = pytest.mark.anyio

PID = "P2abcdefghijklmnopqrstuvwxyz12"
KEY = "K-test-key"
UPDATE = "/v1/mgmt/user/update/phone"
SEARCH = "/v2/mgmt/user/search"
USER_FIELDS = {
    "loginIds": list,
    "userId": str,
    "name": str,
    "email": str,
    "phone": str,
    "verifiedEmail": bool,
    "verifiedPhone": bool,
    "roleNames": list,
    "userTenants": list,
    "status": str,
    "externalIds": list,
    "picture": str,
    "test": bool,
    "customAttributes": dict,
    "createdTime": int,
    "TOTP": bool,
    "SAML": bool,
    "OAuth": dict,
    "webauthn": bool,
    "password": bool,
    "ssoAppIds": list,
    "givenName": str,
    "middleName": str,
    "familyName": str,
    "editable": bool,
    "SCIM": bool,
    "push": bool,
    "permissions": list,
    "OIDC": bool,
    "consentExpiration": int,
}


@pytest.fixture
def emu(samples: Path) -> Emulator:
    users = load_users(samples / "users.csv")
    users.append({**users[0], "loginIds": ["tester"], "userId": "Utester", "test": True})
    return Emulator([ProjectSettings(PID, KEY, users=users)])


@pytest.fixture
async def client(emu: Emulator) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {PID}:{KEY}", "x-descope-project-id": PID}
    async with httpx.AsyncClient(
        transport=emu.transport(), base_url="http://emulator.invalid", headers=headers
    ) as client:
        yield client


def update(login_id: str, phone: str | None, **extra: Any) -> dict[str, Any]:
    return {"loginId": login_id, "phone": phone, "verified": True, "failOnConflict": True} | extra


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["errorCode"] == code
    assert set(body) == {"errorCode", "errorDescription", "errorMessage"}


# -- POST /v1/mgmt/user/update/phone --------------------------------------------------------------


async def test_update_sets_phone_and_verified_and_returns_full_user(
    client: httpx.AsyncClient, emu: Emulator
) -> None:
    response = await client.post(UPDATE, json=update("alice@example.com", "+14155550132"))
    assert response.status_code == 200
    user = response.json()["user"]
    assert {name: type(user[name]) for name in USER_FIELDS} == USER_FIELDS
    assert user["phone"] == "+14155550132" and user["verifiedPhone"] is True
    assert 1_600_000_000 < user["createdTime"] < 2_000_000_000  # epoch seconds, not ms
    assert emu.user(PID, "alice@example.com") == user


@pytest.mark.parametrize("phone", [None, ""])
async def test_null_or_empty_phone_removes_it(
    client: httpx.AsyncClient, emu: Emulator, phone: str | None
) -> None:
    body = {"loginId": "bob@example.com", "phone": phone, "verified": None, "failOnConflict": None}
    response = await client.post(UPDATE, json=body)
    assert response.status_code == 200
    assert response.json()["user"]["phone"] == ""
    assert response.json()["user"]["verifiedPhone"] is False
    assert emu.user(PID, "bob@example.com")["phone"] == ""  # type: ignore[index]


@pytest.mark.parametrize("verified", [False, None])
async def test_verified_false_or_null_leaves_the_phone_unverified(
    client: httpx.AsyncClient, verified: bool | None
) -> None:
    body = update("alice@example.com", "+14155550132", verified=verified)
    response = await client.post(UPDATE, json=body)
    assert response.json()["user"]["verifiedPhone"] is False


@pytest.mark.parametrize(
    "phone", ["4155550132", "+1 415 555 0132", "+04155550132", "+123456", "+1234567890123456", "x"]
)
async def test_a_phone_that_is_not_e164_is_refused(client: httpx.AsyncClient, phone: str) -> None:
    response = await client.post(UPDATE, json=update("alice@example.com", phone))
    assert_error(response, 400, "E011003")


async def test_unknown_login_id_is_404_and_a_user_id_is_accepted(
    client: httpx.AsyncClient, emu: Emulator
) -> None:
    missing = await client.post(UPDATE, json=update("nobody@example.com", "+14155550133"))
    assert_error(missing, 404, "E112102")
    user_id = emu.user(PID, "carol@example.com")["userId"]  # type: ignore[index]
    by_id = await client.post(UPDATE, json=update(user_id, "+442079460019"))
    assert by_id.json()["user"]["loginIds"] == ["carol@example.com"]


async def test_conflict_with_fail_on_conflict_changes_nothing(
    client: httpx.AsyncClient, emu: Emulator
) -> None:
    response = await client.post(UPDATE, json=update("oscar@example.com", "+14155550199"))
    assert_error(response, 409, "E062107")
    assert emu.user(PID, "+14155550199") is not None
    assert emu.user(PID, "oscar@example.com")["phone"] == ""  # type: ignore[index]
    assert emu.stats(PID).merges == ()


@pytest.mark.parametrize("fail_on_conflict", [False, None])
async def test_conflict_without_fail_on_conflict_merges_and_deletes_the_other_user(
    client: httpx.AsyncClient, emu: Emulator, fail_on_conflict: bool | None
) -> None:
    body = update("oscar@example.com", "+14155550199", failOnConflict=fail_on_conflict)
    response = await client.post(UPDATE, json=body)
    assert response.status_code == 200
    assert emu.user(PID, "+14155550199") is None
    assert emu.user(PID, "oscar@example.com")["phone"] == "+14155550199"  # type: ignore[index]
    assert emu.stats(PID).merges == (Merge("oscar@example.com", "+14155550199"),)
    gone = await client.get("/v1/mgmt/user", params={"loginId": "+14155550199"})
    assert_error(gone, 404, "E112102")


async def test_a_user_may_take_its_own_login_id_as_phone(client: httpx.AsyncClient) -> None:
    response = await client.post(UPDATE, json=update("+14155550199", "+14155550199"))
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"{not json", "E011001"),
        (b"", "E011001"),
        (b"[1, 2]", "E011001"),
        (
            b'{"loginId": "alice@example.com", "phone": "+14155550132", "verified": "yes"}',
            "E011001",
        ),
        (b'{"loginId": 7, "phone": "+14155550132"}', "E011001"),
        (b'{"phone": "+14155550132"}', "E011002"),
        (b'{"loginId": "", "phone": "+14155550132"}', "E011002"),
    ],
)
async def test_bad_bodies_are_400(client: httpx.AsyncClient, content: bytes, code: str) -> None:
    response = await client.post(UPDATE, content=content)
    assert_error(response, 400, code)


# -- auth -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {PID}:wrong"},
        {"Authorization": f"Bearer Pother:{KEY}"},
        {"Authorization": f"Basic {PID}:{KEY}"},
        {"Authorization": f"Bearer {PID}"},
        {"Authorization": f"Bearer {PID}:{KEY}", "x-descope-project-id": "Pother"},
    ],
)
async def test_wrong_credentials_are_401_and_cost_no_budget(
    emu: Emulator, headers: dict[str, str]
) -> None:
    async with httpx.AsyncClient(transport=emu.transport(), base_url="http://e") as client:
        response = await client.post(
            UPDATE, json=update("alice@example.com", "+14155550132"), headers=headers
        )
        missing = await client.get("/v1/mgmt/license")
    assert_error(response, 401, "E061103")
    assert_error(missing, 401, "E061103")
    assert emu.stats(PID).calls == 0
    assert emu.user(PID, "alice@example.com")["phone"] == ""  # type: ignore[index]


# -- other endpoints ------------------------------------------------------------------------------


async def test_load_by_login_id_or_user_id(client: httpx.AsyncClient, emu: Emulator) -> None:
    by_login = await client.get("/v1/mgmt/user", params={"loginId": "bob@example.com"})
    user = by_login.json()["user"]
    assert user["phone"] == "+442079460000" and user["verifiedPhone"] is True
    by_id = await client.get("/v1/mgmt/user", params={"userId": user["userId"]})
    assert by_id.json() == by_login.json()
    assert_error(await client.get("/v1/mgmt/user"), 400, "E011002")
    assert_error(await client.get("/v1/mgmt/user", params={"userId": "Unone"}), 404, "E112102")


async def test_search_filters_pages_and_totals(client: httpx.AsyncClient) -> None:
    async def search(**body: Any) -> dict[str, Any]:
        response = await client.post(SEARCH, json=body)
        assert response.status_code == 200, response.text
        return dict(response.json())

    everyone = await search()
    assert everyone["total"] == 22 and len(everyone["users"]) == 22  # the test user is left out
    wanted = ["bob@example.com", "alice@example.com", "nobody@example.com"]
    found = await search(loginIds=wanted)
    assert [u["loginIds"][0] for u in found["users"]] == ["alice@example.com", "bob@example.com"]
    assert (await search(phones=["+442079460000"]))["users"][0]["loginIds"] == ["bob@example.com"]
    page = await search(limit=5, page=4)
    assert page["total"] == 22 and len(page["users"]) == 2
    assert (await search(limit=5, page=9))["users"] == []
    assert (await search(withTestUser=True))["total"] == 23
    assert [u["loginIds"] for u in (await search(testUsersOnly=True))["users"]] == [["tester"]]
    assert (await search(text="COOPER"))["users"][0]["name"] == "Carol Cooper"
    assert (await search(statuses=["disabled"]))["total"] == 0
    for bad in ({"limit": 101}, {"limit": -1}, {"page": -1}):
        assert_error(await client.post(SEARCH, json=bad), 400, "E011004")


async def test_patch_changes_only_the_given_fields(
    client: httpx.AsyncClient, emu: Emulator
) -> None:
    before = emu.user(PID, "bob@example.com")
    body = {"loginId": "bob@example.com", "displayName": "Robert", "verifiedPhone": False}
    response = await client.patch("/v1/mgmt/user/patch", json=body)
    assert response.status_code == 200
    after = response.json()["user"]
    assert after == {**before, "name": "Robert", "verifiedPhone": False}  # type: ignore[dict-item]
    phone = {"loginId": "bob@example.com", "phone": "+442079460018"}
    assert (await client.patch("/v1/mgmt/user/patch", json=phone)).json()["user"]["phone"] == (
        "+442079460018"
    )
    assert emu.stats(PID).updates == {"bob@example.com": 2}


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"loginId": "nobody@example.com", "name": "x"}, 404, "E112102"),
        ({"loginId": "bob@example.com", "phone": "0207946"}, 400, "E011003"),
        ({"loginId": "bob@example.com", "status": "sleeping"}, 400, "E011004"),
        ({"loginId": "oscar@example.com", "phone": "+14155550199"}, 409, "E062107"),
        ({"loginId": "bob@example.com", "verifiedPhone": "yes"}, 400, "E011001"),
        ({"phone": "+14155550100"}, 400, "E011002"),
    ],
)
async def test_patch_errors(
    client: httpx.AsyncClient, body: dict[str, Any], status: int, code: str
) -> None:
    assert_error(await client.patch("/v1/mgmt/user/patch", json=body), status, code)


async def test_patch_batch_reports_partial_failures_inside_a_200(
    client: httpx.AsyncClient, emu: Emulator
) -> None:
    users = [
        {"loginId": "alice@example.com", "phone": "+14155550132", "verifiedPhone": True},
        {"loginId": "nobody@example.com", "phone": "+14155550133"},
        {"loginId": "oscar@example.com", "phone": "+14155550199"},
    ]
    response = await client.patch("/v1/mgmt/user/patch/batch", json={"users": users})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"patchedUsers", "failedUsers", "additionalErrors"}
    assert [u["loginIds"] for u in body["patchedUsers"]] == [["alice@example.com"]]
    failures = {f["user"]["loginIds"][0]: f["failure"] for f in body["failedUsers"]}
    assert set(failures) == {"nobody@example.com", "oscar@example.com"}
    assert emu.user(PID, "+14155550199") is not None  # a patch never merges
    assert emu.stats(PID).updates == {"alice@example.com": 1}
    too_many = {"users": [{"loginId": "alice@example.com"}] * 101}
    assert_error(await client.patch("/v1/mgmt/user/patch/batch", json=too_many), 400, "E011004")
    empty = await client.patch("/v1/mgmt/user/patch/batch", json={"users": []})
    assert_error(empty, 400, "E011002")


async def test_license_answers_the_tier_and_costs_no_budget(
    client: httpx.AsyncClient, emu: Emulator
) -> None:
    response = await client.get("/v1/mgmt/license")
    assert response.json() == {"rateLimitTier": "tier1"}
    assert emu.stats(PID).calls == 0


async def test_unknown_paths_and_methods_get_descope_shaped_errors(
    client: httpx.AsyncClient,
) -> None:
    assert_error(await client.get("/v1/mgmt/nothing"), 404, "E000404")
    wrong_method = await client.get(UPDATE)
    assert wrong_method.status_code == 405
    assert "errorCode" in wrong_method.json()


# -- stats ----------------------------------------------------------------------------------------


async def test_stats_count_requests_updates_and_log_them(
    client: httpx.AsyncClient, emu: Emulator
) -> None:
    await client.post(UPDATE, json=update("alice@example.com", "+14155550132"))
    await client.post(UPDATE, json=update("alice@example.com", "+14155550132"))
    await client.post(UPDATE, json=update("nobody@example.com", "+14155550133"))
    await client.get("/v1/mgmt/user", params={"loginId": "bob@example.com"})
    stats = emu.stats(PID)
    assert stats.requests == {(UPDATE, 200): 2, (UPDATE, 404): 1, ("/v1/mgmt/user", 200): 1}
    assert stats.updates == {"alice@example.com": 2}
    assert (stats.calls, stats.max_window_calls, stats.rate_limited, stats.blocks) == (4, 4, 0, 0)
    assert [(e.path, e.status, e.login_id) for e in stats.log] == [
        (UPDATE, 200, "alice@example.com"),
        (UPDATE, 200, "alice@example.com"),
        (UPDATE, 404, "nobody@example.com"),
        ("/v1/mgmt/user", 200, "bob@example.com"),
    ]
    assert stats.status_count(200) == 3 and stats.total_requests == 4

    served = (await client.get("/_emulator/stats", params={"project": PID})).json()
    project = served["projects"][PID]
    assert project["updates"] == {"alice@example.com": 2}
    assert {"path": UPDATE, "status": 404, "count": 1} in project["requests"]
    assert project["maxWindowCalls"] == 4 and len(project["log"]) == 4
    quiet = (await client.get("/_emulator/stats", params={"log": "0"})).json()
    assert "log" not in quiet["projects"][PID]
    assert (await client.get("/_emulator/stats", params={"project": "Pnone"})).status_code == 404


async def test_the_log_keeps_only_its_limit(samples: Path) -> None:
    emu = Emulator(
        [ProjectSettings(PID, KEY, users=load_users(samples / "users.csv"))], log_limit=2
    )
    headers = {"Authorization": f"Bearer {PID}:{KEY}"}
    async with httpx.AsyncClient(transport=emu.transport(), base_url="http://e") as client:
        for _ in range(3):
            await client.get(
                "/v1/mgmt/user", params={"loginId": "bob@example.com"}, headers=headers
            )
    stats = emu.stats(PID)
    assert len(stats.log) == 2 and stats.log_dropped == 1 and stats.calls == 3


def test_user_returns_a_copy_and_unknown_projects_raise(emu: Emulator) -> None:
    user = emu.user(PID, "bob@example.com")
    assert user is not None
    user["phone"] = "changed"
    assert emu.user(PID, "bob@example.com")["phone"] == "+442079460000"  # type: ignore[index]
    with pytest.raises(KeyError, match="Pnone"):
        emu.stats("Pnone")


def test_the_management_key_stays_out_of_reprs() -> None:
    settings = ProjectSettings(PID, "secret-key-123")
    assert "secret-key-123" not in repr(settings)
    with pytest.raises(Exception, match="management key") as caught:
        ProjectSettings(PID, "has space secret")
    assert "secret" not in str(caught.value).replace("management key", "")


def test_every_assumed_choice_is_documented_once() -> None:
    docs = (Path(__file__).resolve().parent.parent / "docs" / "emulator.md").read_text("utf-8")
    table = docs.split("## Assumed behaviour", 1)[1].split("\n## ", 1)[0]
    documented = [line.split("`")[1] for line in table.splitlines() if line.startswith("| `")]
    assert sorted(documented) == sorted(ASSUMED)
