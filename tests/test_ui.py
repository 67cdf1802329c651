"""batchphone ui: who may use the page (token, Host, CSRF), uploads, the target shown.

In process, through ``httpx.ASGITransport`` (no port). The page driven in a real browser is
tests/test_ui_browser.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from batchphone.errors import UsageError
from batchphone.ui import UiOptions, _banner
from batchphone.ui.app import Page, build_app
from batchphone.ui.security import COOKIE, Keys

PORT = 8123
BASE = f"http://127.0.0.1:{PORT}"
KEY = "K2-ui-management-key-never-shown-0123456789"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _page(work: Path, limit: int = 1000, **kwargs: object) -> Page:
    defaults: dict[str, object] = {
        "work": work,
        "port": PORT,
        "banner": "Rehearsal: emulated project (state.json)",
        "live": False,
        "upload_limit": limit,
        "flags": {},
        "config_path": None,
        "emulator_state": work / "state.json",
    }
    defaults.update(kwargs)
    return Page(**defaults)  # type: ignore[arg-type]


async def _client(page: Page, keys: Keys, host: str = BASE) -> httpx.AsyncClient:
    app, _ = build_app(page, keys)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=host)


@contextlib.asynccontextmanager
async def _signed_in(page: Page, keys: Keys) -> AsyncIterator[httpx.AsyncClient]:
    async with await _client(page, keys) as client:
        answer = await client.get("/", params={"token": keys.url_token})
        assert answer.status_code == 303 and answer.headers["location"] == "/"
        yield client


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*"))


@pytest.mark.anyio
async def test_without_the_token_every_request_is_forbidden(tmp_path: Path) -> None:
    keys = Keys()
    async with await _client(_page(tmp_path), keys) as client:
        for path in ("/", "/static/app.js", "/jobs/20260101-000000-abcdef", "/tasks/t1"):
            answer = await client.get(path)
            assert answer.status_code == 403, path
            assert "open the URL that 'batchphone ui' printed" in answer.text
        assert (await client.get("/", params={"token": "wrong"})).status_code == 403
        answer = await client.post("/upload", content=b"loginId,phone\n")
        assert answer.status_code == 403
    assert _files(tmp_path) == []


@pytest.mark.anyio
async def test_the_token_buys_a_session_cookie_once(tmp_path: Path) -> None:
    keys = Keys()
    page = _page(tmp_path)
    async with _signed_in(page, keys) as client:
        assert client.cookies[COOKIE] == keys.session
        index = await client.get("/")
        assert index.status_code == 200
        assert "Rehearsal: emulated project (state.json)" in index.text
        assert index.headers["referrer-policy"] == "no-referrer"
        assert "default-src 'self'" in index.headers["content-security-policy"]
    # another browser (or local user) with the same URL later: the token is used up
    async with await _client(page, keys) as other:
        assert (await other.get("/", params={"token": keys.url_token})).status_code == 403


@pytest.mark.anyio
async def test_a_wrong_host_is_refused_even_with_the_cookie(tmp_path: Path) -> None:
    keys = Keys()
    page = _page(tmp_path)
    async with _signed_in(page, keys):
        pass
    for host in ("http://evil.example:8123", "http://127.0.0.1:9999", "http://192.168.1.5:8123"):
        async with await _client(page, keys, host=host) as client:
            client.cookies.set(COOKIE, keys.session)
            answer = await client.get("/")
            assert answer.status_code == 421, host
            assert "Wrong Host" in answer.text
            token = await client.get("/", params={"token": keys.url_token})
            assert token.status_code == 421


@pytest.mark.anyio
async def test_a_post_without_the_csrf_token_is_refused_and_writes_nothing(
    tmp_path: Path,
) -> None:
    keys = Keys()
    async with _signed_in(_page(tmp_path), keys) as client:
        body = b"loginId,phone\na@example.com,+14155550100\n"
        for headers in (
            {"X-Filename": "fix.csv"},
            {"X-Filename": "fix.csv", "X-CSRF-Token": "0" * 64},
            # the right token from a page of another origin
            {"X-Filename": "fix.csv", "X-CSRF-Token": keys.csrf, "Origin": "http://evil.example"},
        ):
            answer = await client.post("/upload", content=body, headers=headers)
            assert answer.status_code == 403, headers
            assert "CSRF" in answer.text
        assert _files(tmp_path) == []
        answer = await client.post(
            "/upload", content=body, headers={"X-Filename": "fix.csv", "X-CSRF-Token": keys.csrf}
        )
        assert answer.status_code == 200
        job = answer.json()["job"]
        stored = tmp_path / job / "fix.csv"
        assert stored.read_bytes() == body
        assert stored.stat().st_mode & 0o777 == 0o600
        assert (tmp_path / job).stat().st_mode & 0o777 == 0o700


@pytest.mark.anyio
async def test_an_upload_over_the_limit_is_refused_with_a_message_and_nothing_kept(
    tmp_path: Path,
) -> None:
    keys = Keys()
    async with _signed_in(_page(tmp_path, limit=1000), keys) as client:
        headers = {"X-Filename": "big.csv", "X-CSRF-Token": keys.csrf}
        big = b"loginId,phone\n" + b"someone@example.com,+14155550100\n" * 40  # > 1000 bytes
        answer = await client.post("/upload", content=big, headers=headers)
        assert answer.status_code == 413
        assert answer.json()["error"] == (
            "the file is larger than the limit of 1,000 bytes: nothing was kept"
        )

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            for _ in range(40):
                yield b"someone@example.com,+14155550100\n"

        answer = await client.post("/upload", content=chunks(), headers=headers)
        assert answer.status_code == 413
        assert "larger than the limit" in answer.json()["error"]
        assert _files(tmp_path) == []
        index = await client.get("/")
        assert "Files up to 0.001 MB" in index.text


@pytest.mark.anyio
async def test_an_upload_of_another_file_type_is_refused(tmp_path: Path) -> None:
    keys = Keys()
    async with _signed_in(_page(tmp_path), keys) as client:
        answer = await client.post(
            "/upload", content=b"x", headers={"X-Filename": "fix.docx", "X-CSRF-Token": keys.csrf}
        )
        assert answer.status_code == 400
        assert "choose a CSV, TSV, XLSX, Parquet or JSONL file" in answer.json()["error"]
    assert _files(tmp_path) == []


@pytest.mark.anyio
async def test_a_file_the_reader_refuses_shows_the_cli_s_one_line_error(tmp_path: Path) -> None:
    keys = Keys()
    async with _signed_in(_page(tmp_path), keys) as client:
        answer = await client.post(
            "/upload",
            content="loginId,phone\n".encode("utf-16"),
            headers={"X-Filename": "fix.csv", "X-CSRF-Token": keys.csrf},
        )
        page = await client.get(answer.json()["url"])
        assert page.status_code == 200
        assert "is UTF-16 text: re-save it as UTF-8 (in Excel: CSV UTF-8)" in page.text
        assert 'id="check" disabled' in page.text


def test_the_banner_names_a_live_project_and_never_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DESCOPE_PROJECT_ID", "P2abcdefghijklmnopqrstuvwxyz0123")
    monkeypatch.setenv("DESCOPE_MANAGEMENT_KEY", KEY)
    banner, live, state, _ = _banner(UiOptions(work_dir=tmp_path))
    assert (banner, live, state) == ("LIVE project P2ab…", True, None)
    assert KEY not in banner
    options = UiOptions(work_dir=tmp_path, flags={"emulator_users": tmp_path / "users.csv"})
    banner, live, state, _ = _banner(options)
    assert banner == "Rehearsal: emulated project (rehearsal.json)"
    assert state == (tmp_path / "rehearsal.json").resolve()
    monkeypatch.delenv("DESCOPE_PROJECT_ID")
    with pytest.raises(UsageError, match="no project id"):
        _banner(UiOptions(work_dir=tmp_path))


@pytest.mark.anyio
async def test_a_live_page_never_carries_the_management_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DESCOPE_PROJECT_ID", "P2abcdefghijklmnopqrstuvwxyz0123")
    monkeypatch.setenv("DESCOPE_MANAGEMENT_KEY", KEY)
    banner, live, _, _ = _banner(UiOptions(work_dir=tmp_path))
    keys = Keys()
    page = _page(tmp_path, banner=banner, live=live, emulator_state=None)
    async with _signed_in(page, keys) as client:
        index = await client.get("/")
        assert 'class="target live"' in index.text and "LIVE project P2ab…" in index.text
        assert KEY not in index.text and "P2abcdefghij" not in index.text
