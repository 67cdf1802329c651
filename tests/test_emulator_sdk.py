"""Faithfulness: the official ``descope`` SDK, pointed at the emulator, gets what it expects."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchphone.emulator import Emulator, Faults, ProjectSettings, load_users
from batchphone.emulator.server import ServerThread

descope = pytest.importorskip("descope")
from descope import DescopeClient, UserObj  # noqa: E402
from descope.exceptions import AuthException, RateLimitException  # noqa: E402

PID = "P2abcdefghijklmnopqrstuvwxyz12"  # shorter than 32: the SDK derives no region from it
KEY = "K2-emulator-test-key"
USERS = [{"loginId": "a@example.com"}]


@pytest.fixture(scope="module")
def emu_url(samples_dir: Path) -> Iterator[tuple[Emulator, str]]:
    settings = ProjectSettings(
        PID, KEY, license_tier="tier3", users=load_users(samples_dir / "users.csv")
    )
    emu = Emulator([settings])
    with ServerThread(emu) as base_url:
        yield emu, base_url


@pytest.fixture(scope="module")
def samples_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "samples"


@pytest.fixture(scope="module")
def user_api(emu_url: tuple[Emulator, str]) -> Any:
    _, base_url = emu_url
    client = DescopeClient(project_id=PID, management_key=KEY, base_url=base_url)
    return client.mgmt.user


def test_the_license_handshake_sets_the_tier(emu_url: tuple[Emulator, str]) -> None:
    _, base_url = emu_url
    client = DescopeClient(project_id=PID, management_key=KEY, base_url=base_url)
    assert client._mgmt_http_client.rate_limit_tier == "tier3"


def test_update_phone(user_api: Any, emu_url: tuple[Emulator, str]) -> None:
    emu, _ = emu_url
    result = user_api.update_phone("alice@example.com", "+14155550132", True, True)
    assert result["user"]["phone"] == "+14155550132"
    assert result["user"]["verifiedPhone"] is True
    assert emu.user(PID, "alice@example.com")["verifiedPhone"] is True  # type: ignore[index]
    # the SDK's defaults send JSON nulls: accepted, and they remove the phone
    removed = user_api.update_phone("dave@example.com")
    assert removed["user"]["phone"] == ""


def test_update_phone_errors(user_api: Any) -> None:
    with pytest.raises(AuthException) as conflict:
        user_api.update_phone("oscar@example.com", "+14155550199", True, True)
    assert conflict.value.status_code == 409 and "E062107" in str(conflict.value.error_message)
    with pytest.raises(AuthException) as invalid:
        user_api.update_phone("carol@example.com", "020 7946 0019", True, True)
    assert invalid.value.status_code == 400 and "E011003" in str(invalid.value.error_message)
    with pytest.raises(AuthException) as missing:
        user_api.update_phone("nobody@example.com", "+14155550133", True, True)
    assert missing.value.status_code == 404 and "E112102" in str(missing.value.error_message)


def test_load_and_load_by_user_id(user_api: Any) -> None:
    user = user_api.load("bob@example.com")["user"]
    assert user["loginIds"] == ["bob@example.com"] and isinstance(user["createdTime"], int)
    assert user_api.load_by_user_id(user["userId"])["user"]["userId"] == user["userId"]


def test_search_all(user_api: Any) -> None:
    found = user_api.search_all(login_ids=["bob@example.com", "carol@example.com"])
    assert found["total"] == 2
    assert [u["loginIds"][0] for u in found["users"]] == ["bob@example.com", "carol@example.com"]
    page = user_api.search_all(limit=10, page=2)
    assert page["total"] == 22 and len(page["users"]) == 2
    assert user_api.search_all(phones=["+442079460000"])["users"][0]["name"] == "Bob Baker"


def test_patch_and_patch_batch(user_api: Any) -> None:
    patched = user_api.patch("erin@example.com", display_name="Erin E.", verified_phone=False)
    assert patched["user"]["name"] == "Erin E." and patched["user"]["phone"] == "+33612345678"
    result = user_api.patch_batch(
        [UserObj("peggy@example.com", phone="+61412345678"), UserObj("ghost@example.com")]
    )
    assert [u["loginIds"] for u in result["patchedUsers"]] == [["peggy@example.com"]]
    assert result["failedUsers"][0]["user"]["loginIds"] == ["ghost@example.com"]


def test_applied_500_raises_in_the_sdk_while_the_user_changed(
    user_api: Any, emu_url: tuple[Emulator, str]
) -> None:
    emu, _ = emu_url
    emu.set_faults(Faults(applied_500=1.0))
    try:
        with pytest.raises(AuthException) as caught:
            user_api.update_phone("frank@example.com", "+14155550151", True, True)
    finally:
        emu.set_faults(Faults())
    assert caught.value.status_code == 500 and "E000500" in str(caught.value.error_message)
    assert emu.user(PID, "frank@example.com")["phone"] == "+14155550151"  # type: ignore[index]


def test_a_wrong_key_is_a_401(emu_url: tuple[Emulator, str]) -> None:
    _, base_url = emu_url
    client = DescopeClient(project_id=PID, management_key="wrong", base_url=base_url)
    with pytest.raises(AuthException) as caught:
        client.mgmt.user.load("bob@example.com")
    assert caught.value.status_code == 401


def test_rate_limit_exception_carries_retry_after() -> None:
    emu = Emulator([ProjectSettings(PID, KEY, rate_limit=2, penalty=30.0, users=USERS)])
    with ServerThread(emu) as base_url:
        user_api = DescopeClient(project_id=PID, management_key=KEY, base_url=base_url).mgmt.user
        user_api.load("a@example.com")
        user_api.load("a@example.com")
        with pytest.raises(RateLimitException) as exceeded:
            user_api.update_phone("a@example.com", "+12345678901", True, True)
        emu.block(PID, 90.0)
        with pytest.raises(RateLimitException) as blocked:
            user_api.load("a@example.com")
    # whole seconds left in the block, rounded up (a second may pass on a slow machine)
    assert exceeded.value.rate_limit_parameters["Retry-After"] in (30, 29)
    assert blocked.value.rate_limit_parameters["Retry-After"] in (90, 89)
    assert str(exceeded.value.status_code) == "E130429"  # the SDK puts errorCode there
    assert emu.user(PID, "a@example.com")["phone"] == ""  # type: ignore[index]
    assert emu.stats(PID).rate_limited == 2
