"""Settings: precedence defaults < config.toml < environment < flags, and one-line errors."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from batchphone.api import Target
from batchphone.config import (
    Endpoint,
    Secret,
    Settings,
    check_plain_http,
    load_settings,
)
from batchphone.errors import UsageError
from batchphone.options import parse_rate


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(body, encoding="utf-8")
    return path


def test_defaults_without_any_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings({}, env={})
    assert (settings.rate_calls, settings.rate_period) == (500, 60.0)
    assert settings.concurrency == 8
    assert settings.allow_merge is False and settings.allow_remove is False
    assert settings.verified is None
    assert settings.management_key is None


def test_precedence_config_then_env_then_flags(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        '[batchphone]\nrate = "100/60"\nconcurrency = 3\nproject_id = "Pfromconfig"\n'
        'phone_column = "mobile"\n',
    )
    env = {"BATCHPHONE_RATE": "200/60", "DESCOPE_PROJECT_ID": "Pfromenv"}
    settings = load_settings({"rate": "300/30"}, env=env, config_path=config)
    assert (settings.rate_calls, settings.rate_period) == (300, 30.0)  # flag wins
    assert settings.project_id == "Pfromenv"  # env beats config
    assert settings.concurrency == 3  # config beats default
    assert settings.phone_column == "mobile"
    only_config = load_settings({}, env={}, config_path=config)
    assert only_config.project_id == "Pfromconfig"
    assert only_config.rate_calls == 100


def test_default_config_file_is_read_from_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _config(tmp_path, "[batchphone]\nconcurrency = 5\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings({}, env={}).concurrency == 5


@pytest.mark.parametrize(
    ("flags", "env", "config", "expected"),
    [
        ({"rate": "fast"}, {}, "", "rate: bad value 'fast' (flag rate=...): expected N/SECONDS"),
        ({}, {"BATCHPHONE_CONCURRENCY": "0"}, "", "environment variable BATCHPHONE_CONCURRENCY"),
        ({}, {}, "[batchphone]\ntimeout = -1\n", "config.toml"),
        ({}, {}, "[batchphone]\nrate_limit = 3\n", "unknown setting 'rate_limit'"),
        (
            {},
            {},
            "[batchphone]\nskip_unchanged = true\n",
            "skip_unchanged was removed: every run reads the users first now "
            "(no_lookup = true turns that off)",
        ),
        ({}, {}, "[batchphone\n", "is not valid TOML"),
        ({}, {"DESCOPE_BASE_URI": "ftp://x"}, "", "base_url: bad value 'ftp://x'"),
        (
            {"default_region": "XX"},
            {},
            "",
            "default_region: bad value 'XX' (flag default_region=...)",
        ),
    ],
)
def test_bad_values_name_setting_and_source(
    tmp_path: Path, flags: dict[str, str], env: dict[str, str], config: str, expected: str
) -> None:
    path = _config(tmp_path, config)
    with pytest.raises(UsageError) as caught:
        load_settings(flags, env=env, config_path=path)
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_key_from_env_or_file_never_from_config(tmp_path: Path) -> None:
    settings = load_settings({}, env={"DESCOPE_MANAGEMENT_KEY": "K-env-secret"}, config_path=None)
    assert settings.management_key == Secret("K-env-secret")
    key_file = tmp_path / "key"
    key_file.write_text("K-file-secret\n", encoding="utf-8")
    from_file = load_settings(
        {"management_key_file": str(key_file)}, env={"DESCOPE_MANAGEMENT_KEY": "K-env-secret"}
    )
    assert from_file.management_key == Secret("K-file-secret")  # the flag wins
    config = _config(tmp_path, '[batchphone]\nmanagement_key = "K-in-config"\n')
    with pytest.raises(UsageError) as caught:
        load_settings({}, env={}, config_path=config)
    assert "must not be stored in a config file" in str(caught.value)
    assert "K-in-config" not in str(caught.value)


def test_secret_never_shows_itself() -> None:
    secret = Secret("K-very-secret")
    settings = load_settings({}, env={"DESCOPE_MANAGEMENT_KEY": "K-very-secret"})
    for text in (repr(secret), str(secret), f"{secret}", repr(settings), str(settings)):
        assert "K-very-secret" not in text
    assert secret.reveal() == "K-very-secret"


def test_an_endpoint_never_shows_its_key_and_holds_it_only_as_a_secret() -> None:
    endpoint = Endpoint("P2abc", "https://api.descope.com", Secret("K-very-secret"))
    for text in (repr(endpoint), str(endpoint), f"{endpoint}"):
        assert "K-very-secret" not in text and "P2abc" in text
    assert endpoint.management_key.reveal() == "K-very-secret"
    # the revealed key as a plain str (what a dict target used to carry) is refused, unnamed
    with pytest.raises(TypeError, match=r"must be a batchphone\.Secret") as caught:
        Endpoint("P2abc", "https://api.descope.com", "K-very-secret")  # type: ignore[arg-type]
    assert "K-very-secret" not in str(caught.value)


def test_missing_key_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        load_settings({"management_key_file": str(tmp_path / "nope")}, env={})
    assert "management key file" in str(caught.value) and "cannot read it" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"), [("500/60", (500, 60.0)), (" 50 / 1 ", (50, 1.0)), ("20/0.5s", (20, 0.5))]
)
def test_parse_rate(text: str, expected: tuple[int, float]) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["", "500", "0/60", "5/0", "-1/60", "a/b"])
def test_parse_rate_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)


def test_the_rate_margin_is_clock_skew_only_and_may_be_zero(tmp_path: Path) -> None:
    assert load_settings({}, env={}, config_path=_config(tmp_path, "")).rate_margin == 0.0005
    assert load_settings({}, env={"BATCHPHONE_RATE_MARGIN": "0"}).rate_margin == 0.0
    with pytest.raises(UsageError, match=r"rate_margin: bad value '1'"):
        load_settings({}, env={"BATCHPHONE_RATE_MARGIN": "1"})


def test_the_budget_store_is_file_by_default_and_checked() -> None:
    assert load_settings({}, env={}).budget_store == "file"
    env = {"BATCHPHONE_BUDGET_STORE": "redis://cache:6379/0"}
    assert load_settings({}, env=env).budget_store == "redis://cache:6379/0"
    assert load_settings({"budget_store": "NONE"}, env=env).budget_store == "none"
    with pytest.raises(UsageError, match=r"budget_store: bad value 'memcached://x' \(flag"):
        load_settings({"budget_store": "memcached://x"}, env={})


#: keys that cannot be one header value; each holds its parts (never to be shown) apart
BROKEN_KEYS = [
    "K2firstLineOfTheKey0123\nsecondLineOfTheKey4567",
    "K2firstLineOfTheKey0123\r\nsecondLineOfTheKey4567",
    "K2firstLineOfTheKey0123 secondLineOfTheKey4567",
    "K2firstLineOfTheKey0123\x07secondLineOfTheKey4567",
    "K2firstLineOfTheKey0123\u00e9secondLineOfTheKey4567",
]


def key_parts(key: str) -> list[str]:
    """The pieces of ``key`` between the characters that break it: none may ever show."""
    return [part for part in re.split(r"[^!-~]+", key) if part]


@pytest.mark.parametrize("key", BROKEN_KEYS)
def test_a_key_with_a_break_inside_is_refused_wherever_it_comes_from(
    tmp_path: Path, key: str
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(key + "\r\n", encoding="utf-8")
    attempts: list[Callable[[], object]] = [
        lambda: load_settings({"management_key_file": str(key_file)}, env={}),
        lambda: load_settings({}, env={"DESCOPE_MANAGEMENT_KEY": key}),
        lambda: Settings(management_key=Secret(key)),
        lambda: Target("P2abc", Secret(key)),
        lambda: Target.from_env({"DESCOPE_PROJECT_ID": "P2abc", "DESCOPE_MANAGEMENT_KEY": key}),
        lambda: Endpoint("P2abc", "https://api.descope.com", Secret(key)),
    ]
    for attempt in attempts:
        with pytest.raises(UsageError) as caught:
            attempt()
        message = caught.value.message
        assert "line break, a control character" in message and "\n" not in message
        assert not any(part in message for part in key_parts(key))
        assert caught.value.setting == "management_key"


def test_a_key_file_may_end_with_a_line_break(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(b"  K2-one-line-key\r\n")
    settings = load_settings({"management_key_file": str(key_file)}, env={})
    assert settings.management_key == Secret("K2-one-line-key")
    assert Target("P2abc", Secret("K2-one-line-key\n")).management_key == Secret("K2-one-line-key")


@pytest.mark.parametrize(
    "url",
    ["https://api.descope.com", "https://10.1.2.3:8443", "http://127.0.0.1:8765",
     "http://127.8.9.10", "http://[::1]:8765", "http://localhost:8765"],
)  # fmt: skip
def test_https_anywhere_and_http_to_this_machine_are_allowed(url: str) -> None:
    check_plain_http(url, allowed=False)
    assert Target("P2abc", Secret("K2x"), url).base_url == url.rstrip("/")


@pytest.mark.parametrize(
    "url",
    ["http://api.descope.com", "http://203.0.113.7:8080", "http://[2001:db8::1]:80",
     "http://localhost.example.com", "http://127.0.0.1.nip.io", "http://user:pw@10.0.0.1"],
)  # fmt: skip
def test_plain_http_to_another_machine_needs_allow_insecure_http(tmp_path: Path, url: str) -> None:
    with pytest.raises(UsageError) as caught:
        Target("P2abc", Secret("K2x"), url)
    message = caught.value.message
    assert message.startswith("base URL http://") and "allow_insecure_http=True" in message
    assert "pw" not in message and caught.value.setting == "base_url"
    assert Target("P2abc", Secret("K2x"), url, allow_insecure_http=True).base_url == url
    # the setting, from each of its sources
    config = _config(tmp_path, "[batchphone]\nallow_insecure_http = true\n")
    assert load_settings({}, env={}, config_path=config).allow_insecure_http
    assert load_settings({}, env={"BATCHPHONE_ALLOW_INSECURE_HTTP": "1"}).allow_insecure_http
    flagged = load_settings({"allow_insecure_http": True}, env={})
    assert flagged.allow_insecure_http and not load_settings({}, env={}).allow_insecure_http
    given = {"project_id": "P2abc", "base_url": url}
    key = {"DESCOPE_MANAGEMENT_KEY": "K2x"}
    with pytest.raises(UsageError, match="plain http to another machine"):
        Target.from_settings(load_settings(given, env=key))
    allowed = Target.from_settings(load_settings({**given, "allow_insecure_http": True}, env=key))
    assert allowed is not None and allowed.base_url == url
