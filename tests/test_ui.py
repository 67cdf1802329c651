"""batchphone ui: who may use the page (token, Host, CSRF), uploads, the target shown.

In process, through ``httpx.ASGITransport`` (no port). The page driven in a real browser is
tests/test_ui_browser.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

from batchphone.errors import UsageError
from batchphone.files.lock import RunLock
from batchphone.ui import UiOptions, _banner
from batchphone.ui.app import build_app
from batchphone.ui.jobs import Page
from batchphone.ui.security import Keys, cookie_name

PORT = 8123
COOKIE = cookie_name(PORT)
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
        assert COOKIE == "batchphone_ui_8123"  # one per port: another server keeps its own
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


async def _finished(client: httpx.AsyncClient, task: str) -> dict[str, object]:
    deadline = time.monotonic() + 120  # a worker process on a loaded machine
    while True:
        view: dict[str, object] = (await client.get(f"/tasks/{task}")).json()
        if view["state"] in ("done", "failed") or time.monotonic() > deadline:
            return view
        await anyio.sleep(0.05)


async def _post(client: httpx.AsyncClient, keys: Keys, path: str, **body: object) -> httpx.Response:
    return await client.post(path, json=body, headers={"X-CSRF-Token": keys.csrf})


@pytest.mark.slow
@pytest.mark.anyio
async def test_check_run_download_and_undo_through_the_page(tmp_path: Path) -> None:
    """The page's flow without a browser: each step a worker process on an emulated project."""
    import batchphone
    from batchphone.emulator import load_users
    from batchphone.emulator.statefile import load_state

    work = tmp_path / "work"
    work.mkdir()
    seed = tmp_path / "users.csv"
    seed.write_text(
        "loginId,phone\na@example.com,+14155550001\nb@example.com,+14155550002\n"
        "c@example.com,+14155550003\n"
    )
    sheet = tmp_path / "fix.csv"
    sheet.write_text(
        "login,mobile\na@example.com,(415) 555-0101\nb@example.com,+14155550002\n"
        "c@example.com,+14155550103\nd@example.com,+14155550104\ne@example.com,12\n"
    )
    state = tmp_path / "state.json"
    page = _page(work, limit=10**6, emulator_state=state, emulator_users=seed)
    keys = Keys()
    async with _signed_in(page, keys) as client:
        headers = {"X-Filename": "fix.csv", "X-CSRF-Token": keys.csrf}
        job = (await client.post("/upload", content=sheet.read_bytes(), headers=headers)).json()
        html = (await client.get(job["url"])).text
        # the columns are guessed from the header
        assert "<option selected>login</option>" in html
        assert "<option selected>mobile</option>" in html
        options = {"login_id_column": "login", "phone_column": "mobile", "default_region": "US"}
        check = await _post(client, keys, f"/jobs/{job['job']}/check", **options)
        assert (await _finished(client, check.json()["task"]))["state"] == "done"

        cli = await anyio.to_thread.run_sync(
            lambda: batchphone.plan(
                sheet,
                out=tmp_path / "cli-plan.csv",
                target=batchphone.Target.emulator(load_users(seed)),
                **options,
            )
        )
        assert cli.counts == {"change": 2, "unchanged": 1, "not_found": 1, "invalid": 1}
        html = (await client.get(job["url"])).text
        for status, n in cli.counts.items():
            assert f"<b>{n}</b> {status}</a>" in html
        assert "Update the phones of <b>2</b> users" in html

        run = f"/jobs/{job['job']}/run"
        refused = await _post(client, keys, run, confirm="3")
        assert refused.status_code == 409
        assert refused.json()["error"] == "confirm the run of 2 changes first"
        # a CLI run holds the result file: the page's run is told which process has it
        lock = RunLock(work / job["job"] / "result.xlsx")
        lock.acquire()
        try:
            blocked = await _post(client, keys, run, confirm="2", canary="1")
            view = await _finished(client, blocked.json()["task"])
            assert re.fullmatch(
                rf"result.xlsx is being written by another batchphone run \(pid {os.getpid()} "
                r"on [^)]+\); wait for it or stop it first",
                str(view["error"]),
            )
            html = (await client.get(job["url"])).text
            assert f"writing this run's result (pid {os.getpid()} on " in html
        finally:
            lock.release()
        started = await _post(client, keys, run)  # approved once: the same run again
        view = await _finished(client, started.json()["task"])
        assert view["canary"] == "passed: the first 1 updates stuck"
        assert view["summaries"][-1]["counts"]["updated"] == 2  # type: ignore[index]

        download = await client.get(f"/jobs/{job['job']}/files/short.csv")
        assert download.headers["content-disposition"] == 'attachment; filename="fix-short.csv"'
        lines = download.text.splitlines()
        # the number the sheet shows first: the one a support person looks for
        assert lines[0] == "line,row,loginId,phone_input,phone,status,reason"
        assert lines[1] == "2,1,a@example.com,(415) 555-0101,+14155550101,updated,"
        full = await client.get(f"/jobs/{job['job']}/files/result.xlsx")
        assert full.content[:2] == b"PK"

        # an ordinary run on disk: the CLI's undo reads it as the page's does
        cli_undo = await anyio.to_thread.run_sync(
            lambda: batchphone.undo(
                work / job["job"] / "result.xlsx",
                out=tmp_path / "cli-undo-check.csv",
                target=batchphone.Target.emulator(state=state),
                dry_run=True,
            )
        )
        assert cli_undo.counts == {"change": 2, "unchanged": 3}
        check_undo = await _post(client, keys, f"/jobs/{job['job']}/undo-check")
        await _finished(client, check_undo.json()["task"])
        assert 'Undo would restore <b id="restores">2</b>' in (await client.get(job["url"])).text
        undo = await _post(client, keys, f"/jobs/{job['job']}/undo", confirm="2")
        assert (await _finished(client, undo.json()["task"]))["state"] == "done"

        index = (await client.get("/")).text
        assert index.count(f'href="/jobs/{job["job"]}"') == 4  # plan, result, undo-check, undo

    phones = {u["loginIds"][0]: u.get("phone") for u in load_state(state)}
    assert phones == {f"{x}@example.com": f"+1415555000{i}" for i, x in enumerate("abc", 1)}


@pytest.mark.anyio
async def test_the_history_shows_a_run_the_cli_made_in_the_work_folder(tmp_path: Path) -> None:
    import batchphone

    sheet = tmp_path / "cli.csv"
    sheet.write_text("loginId,phone\na@example.com,+14155550101\nb@example.com,12\n")
    out = tmp_path / "cli-result.csv"
    await anyio.to_thread.run_sync(
        lambda: batchphone.run(sheet, out=out, target=batchphone.Target.emulator())
    )
    keys = Keys()
    async with _signed_in(_page(tmp_path), keys) as client:
        index = (await client.get("/")).text
    assert "<td>cli-result.csv</td>" in index
    assert "invalid 1" in index and "updated 1" in index
    assert "finished" in index and "running" not in index  # its lock was released
    lock = RunLock(out)  # a CLI run going on it now
    lock.acquire()
    try:
        async with _signed_in(_page(tmp_path), keys := Keys()) as client:
            index = (await client.get("/")).text
    finally:
        lock.release()
    assert re.search(rf"running \(pid {os.getpid()} on [^)]+\)", index)


def test_batchphone_ui_without_a_project_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from batchphone.cli import main

    for name in ("DESCOPE_PROJECT_ID", "DESCOPE_MANAGEMENT_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["ui", "--no-browser", "--work-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "batchphone: error: no project id: set DESCOPE_PROJECT_ID, project_id in config.toml, "
        "or --project-id (or rehearse with --emulator-state FILE)"
    ]


@pytest.mark.anyio
async def test_an_empty_first_sheet_leaves_the_other_sheets_to_pick(tmp_path: Path) -> None:
    from openpyxl import Workbook

    book = Workbook()
    assert book.active is not None
    book.active.title = "Cover"
    users = book.create_sheet("Users")
    users.append(["E-mail", "Phone Number"])
    users.append(["a@example.com", "+14155550100"])
    data = tmp_path / "in.xlsx"
    book.save(data)
    work = tmp_path / "work"
    work.mkdir()
    keys = Keys()
    async with _signed_in(_page(work, limit=10**6), keys) as client:
        headers = {"X-Filename": "../../fix <1>.XLSX", "X-CSRF-Token": keys.csrf}
        job = (await client.post("/upload", content=data.read_bytes(), headers=headers)).json()
        assert sorted(p.name for p in (work / job["job"]).iterdir()) == ["fix _1_.xlsx", "job.json"]
        first = (await client.get(job["url"])).text
        assert 'role="alert"' not in first
        assert '<option value="Cover" selected>' in first and '<option value="Users" >' in first
        users_page = (await client.get(job["url"], params={"sheet": "Users"})).text
    assert "<option selected>E-mail</option>" in users_page
    assert "<option selected>Phone Number</option>" in users_page


def test_a_task_shows_counts_budget_eta_the_429_countdown_and_the_canary() -> None:
    import io
    import json

    from batchphone.models import RowResult, Status
    from batchphone.ui.tasks import Task, _apply
    from batchphone.ui.worker import JsonProgress

    lines = io.StringIO()
    progress = JsonProgress(lines, step=0)
    progress.start(100, done=10, calls_per_second=2.0)
    for row in range(1, 21):
        progress.advance(RowResult(row, "x", "+1", "+1", Status.UPDATED, attempts=1))
    progress.paused(30.0, calls_per_second=1.0)
    progress.close()
    task = Task(id="t1", job_id="j", kind="run", out=None)
    for line in lines.getvalue().splitlines():
        event = json.loads(line)
        assert set(event) <= {"event", "step", "total", "done", "calls_per_second", "counts",
                              "attempts", "seconds"}  # counts only: no row's content  # fmt: skip
        _apply(task, event)
    _apply(task, {"event": "log", "name": "canary_passed", "rows": 5})
    view = task.view()
    assert (view["total"], view["done"], view["counts"]) == (100, 30, {"updated": 20})
    assert view["attempts"] == 20 and view["calls_per_second"] == 1.0
    assert 29 < view["pause_s"] <= 30  # the countdown of the 429 pause
    assert view["eta_s"] >= 70 / 1.0  # never sooner than the budget allows
    assert view["canary"] == "passed: the first 5 updates stuck"
    _apply(task, {"event": "log", "name": "canary_failed", "rows": 5, "mismatches": 2})
    assert task.view()["canary"] == ("failed: 2 of 5 updates did not stick; nothing more was sent")


async def _uploaded(client: httpx.AsyncClient, keys: Keys, text: str) -> str:
    headers = {"X-Filename": "fix.csv", "X-CSRF-Token": keys.csrf}
    job: str = (await client.post("/upload", content=text.encode(), headers=headers)).json()["job"]
    return job


def _noted_run(folder: Path, counts: dict[str, int], exit_code: int) -> None:
    """The page's notes of a checked and run job, as a worker leaves them."""
    from batchphone.ui import files

    record = files.load_job(folder)
    plan = {"counts": {"change": sum(counts.values())}, "planned_calls": 3, "planned_s": 0.0}
    record["settings"] = {"api": "update", "login_id_column": "loginId", "phone_column": "phone"}
    record["check"] = {"summaries": [plan], "plan": plan}
    summary = {"counts": counts, "exit_code": exit_code, "requests": 3, "elapsed_s": 1.0,
               "stopped_reason": "interrupted"}  # fmt: skip
    record["run"] = {"options": {}, "summaries": [summary], "error": None, "exit_code": exit_code}
    files.save_job(folder, record)


def _result_xlsx(path: Path, statuses: list[str], reasons: list[str] | None = None) -> None:
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["row", "line", "loginId", "status", "reason"])
    for row, status in enumerate(statuses, start=1):
        reason = reasons[row - 1] if reasons else None
        sheet.append([row, row + 2, f"u{row}@example.com", status, reason])
    book.save(path)


@pytest.mark.anyio
async def test_unsettled_rows_are_explained_and_resume_is_offered(tmp_path: Path) -> None:
    keys = Keys()
    async with _signed_in(_page(tmp_path, limit=10**6), keys) as client:
        job = await _uploaded(client, keys, "loginId,phone\na@example.com,+14155550101\n")
        _noted_run(tmp_path / job, {"updated": 1, "unsettled": 2}, 130)
        html = (await client.get(f"/jobs/{job}")).text
        assert '<li class="status-unsettled"><b>2</b> unsettled</li>' in html
        unsettled = r'id="unsettled"><b>2</b> rows are <b>unsettled</b>: the call went out'
        assert re.search(unsettled, html)
        assert "Resume reads those users back first" in html
        assert 'id="resume"' in html  # no row is not_attempted: the unsettled ones call for it
        # the rows themselves, with their reason in the page's words and the sheet's row number
        statuses, reasons = ["updated", "unsettled", "unsettled"], ["", "ANSWER_LOST", "IN_FLIGHT"]
        _result_xlsx(tmp_path / job / "result.xlsx", statuses, reasons)
        html = (await client.get(f"/jobs/{job}")).text
        attention = re.search(r'<details id="attention".*?</details>', html, re.S)
        assert attention is not None and "Rows to look at: 2" in attention.group(0)
        cells = re.findall(r'<td class="num">(\d+)</td>\s*<td>([^<]*)</td>', attention.group(0))
        assert cells == [("4", "u2@example.com"), ("5", "u3@example.com")]
        assert "answer lost: may have been applied" in attention.group(0)
        assert "Resume reads the user back and settles the row" in attention.group(0)
        # a run of the CLI in the work folder, left with unsettled rows, in the history
        (tmp_path / "cli.csv").write_text("row,status\n1,updated\n2,unsettled\n")
        (tmp_path / "cli.csv.journal").write_bytes(b"")
        index = (await client.get("/")).text
    assert re.search(r"<td>cli.csv</td>\s*<td>cli</td>\s*<td>.*unsettled: resume</span>", index)


@pytest.mark.anyio
async def test_the_result_shown_is_the_result_file_as_the_cli_left_it(tmp_path: Path) -> None:
    keys = Keys()
    async with _signed_in(_page(tmp_path, limit=10**6), keys) as client:
        job = await _uploaded(client, keys, "loginId,phone\na@example.com,+14155550101\n")
        _noted_run(tmp_path / job, {"updated": 1, "unsettled": 2}, 130)
        # the CLI resumed the page's run since: its rows are settled, undone by the CLI too
        _result_xlsx(tmp_path / job / "result.xlsx", ["updated", "updated", "updated"])
        html = (await client.get(f"/jobs/{job}")).text
        assert '<li class="status-updated"><b>3</b> updated</li>' in html
        assert 'id="run-changed"' in html
        assert 'id="unsettled"' not in html and 'id="resume"' not in html
        _result_xlsx(tmp_path / job / "undo.xlsx", ["updated", "updated", "unchanged"])
        html = (await client.get(f"/jobs/{job}")).text
    assert "This run was undone by another process (the CLI)" in html
    assert 'id="undo-check"' not in html


def test_the_page_explains_a_reason_in_its_own_words_not_the_cli_s_flags() -> None:
    from batchphone.models import Reason
    from batchphone.rows.prepare import EXPLANATIONS
    from batchphone.ui.app import _explain

    cli_words = ("--allow-remove", "--default-region", "--retry-failed", "rerun the same command")
    named = [r for r, text in EXPLANATIONS.items() if any(w in text for w in cli_words)]
    assert {Reason.MISSING_REGION, Reason.EMPTY_PHONE, Reason.ANSWER_LOST} <= set(named)
    for reason in named:
        text = _explain(reason.value, None)
        assert text and not any(w in text for w in cli_words), (reason, text)
    assert "Resume reads the user back" in _explain("ANSWER_LOST", None)
    assert "had no phone before the run" in _explain("EMPTY_PHONE", None, True)
    for reason in ("INTERRUPTED", "REMOVE_PHONE"):  # no sentence of the CLI's: one of the page's
        assert _explain(reason, None), reason


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_check_that_cannot_reach_the_api_says_why_not_an_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DESCOPE_MANAGEMENT_KEY", KEY)
    flags = {"project_id": "P2abcdefghijklmnopqrstuvwxyz0123", "base_url": "http://127.0.0.1:1"}
    page = _page(tmp_path, limit=10**6, live=True, emulator_state=None, flags=flags)
    keys = Keys()
    async with _signed_in(page, keys) as client:
        job = await _uploaded(client, keys, "loginId,phone\na@example.com,+14155550101\n")
        check = await _post(client, keys, f"/jobs/{job}/check")
        view = await _finished(client, check.json()["task"])
        assert view["exit_code"] == 3
        assert str(view["error"]).startswith("stopped: cannot reach http://127.0.0.1:1")
        html = (await client.get(f"/jobs/{job}")).text
    assert "stopped: cannot reach http://127.0.0.1:1" in html and "unexpectedly" not in html
    assert "The check did not finish" in html and "Nothing to change" not in html
    assert KEY not in html


@pytest.mark.slow
@pytest.mark.anyio
async def test_undo_can_remove_the_phones_a_run_gave_to_users_who_had_none(
    tmp_path: Path,
) -> None:
    from batchphone.emulator.statefile import load_state

    seed = tmp_path / "users.csv"
    seed.write_text("loginId\na@example.com\nb@example.com\n")  # no phone yet
    state = tmp_path / "state.json"
    work = tmp_path / "work"
    work.mkdir()
    page = _page(work, limit=10**6, emulator_state=state, emulator_users=seed)
    keys = Keys()
    async with _signed_in(page, keys) as client:
        text = "loginId,phone\na@example.com,+14155550101\nb@example.com,+14155550102\n"
        job = await _uploaded(client, keys, text)
        check = await _post(client, keys, f"/jobs/{job}/check")
        await _finished(client, check.json()["task"])
        run = await _post(client, keys, f"/jobs/{job}/run", confirm="2")
        assert (await _finished(client, run.json()["task"]))["state"] == "done"
        html = (await client.get(f"/jobs/{job}")).text
        assert "Also remove the phones this run gave to users who had none" in html
        checked = await _post(client, keys, f"/jobs/{job}/undo-check", allow_remove=True)
        await _finished(client, checked.json()["task"])
        html = (await client.get(f"/jobs/{job}")).text
        assert 'Undo would restore <b id="restores">2</b>' in html
        undo = await _post(client, keys, f"/jobs/{job}/undo", confirm="2")
        assert (await _finished(client, undo.json()["task"]))["state"] == "done"
    assert [u.get("phone", "") for u in load_state(state)] == ["", ""]


@pytest.mark.anyio
async def test_the_history_counts_a_cli_run_going_on_from_its_journal(tmp_path: Path) -> None:
    import batchphone

    sheet = tmp_path / "cli.csv"
    sheet.write_text("loginId,phone\na@example.com,+14155550101\nb@example.com,12\n")
    out = tmp_path / "cli-result.csv"
    await anyio.to_thread.run_sync(
        lambda: batchphone.run(sheet, out=out, target=batchphone.Target.emulator())
    )
    out.unlink()  # as while the run goes on: its result file is written when it ends
    lock = RunLock(out)
    lock.acquire()
    try:
        async with _signed_in(_page(tmp_path), Keys()) as client:
            index = (await client.get("/")).text
    finally:
        lock.release()
    row = re.search(r"<td>cli-result.csv</td>(.*?)</tr>", index, re.S)
    assert row is not None
    assert "<td>run</td>" in row.group(1)  # the command, as its journal names it
    assert re.search(rf"running \(pid {os.getpid()} on [^)]+\)", row.group(1))
    assert "invalid 1" in row.group(1) and "updated 1" in row.group(1)


@pytest.mark.anyio
async def test_the_downloads_keep_a_formula_like_login_id_exact(tmp_path: Path) -> None:
    import csv
    import io

    from openpyxl import load_workbook

    import batchphone
    from batchphone.files.formats import defuse

    keys = Keys()
    async with _signed_in(_page(tmp_path, limit=10**6), keys) as client:
        job = await _uploaded(client, keys, "loginId,phone\na@example.com,+14155550101\n")
        sheet = tmp_path / "in.csv"
        ids = ["'=1+2@example.com", "=SUM(A1)@example.com", "'plain@example.com"]
        rows = "".join(f'"{i}",+1415555010{n}\n' for n, i in enumerate(ids))
        sheet.write_text("loginId,phone\n" + rows)
        result = tmp_path / job / "result.xlsx"
        await anyio.to_thread.run_sync(
            lambda: batchphone.run(sheet, out=result, target=batchphone.Target.emulator())
        )
        text = (await client.get(f"/jobs/{job}/files/result.csv")).text
        short = (await client.get(f"/jobs/{job}/files/short.xlsx")).content
    # as the CLI's CSV results: undo takes the one ' it added off again
    assert [r["loginId"] for r in csv.DictReader(io.StringIO(text))] == [defuse(i) for i in ids]
    assert defuse(ids[0]) == "''=1+2@example.com"
    book = tmp_path / "short.xlsx"
    book.write_bytes(short)
    rows = list(load_workbook(book, read_only=True).active.iter_rows(values_only=True))
    assert rows[0][:3] == ("line", "row", "loginId")
    assert [r[:3] for r in rows[1:]] == [(n + 2, n + 1, i) for n, i in enumerate(ids)]


@pytest.mark.anyio
async def test_an_undo_left_unsettled_offers_to_resume_it(tmp_path: Path) -> None:
    from batchphone.ui import files

    keys = Keys()
    async with _signed_in(_page(tmp_path, limit=10**6), keys) as client:
        job = await _uploaded(client, keys, "loginId,phone\na@example.com,+14155550101\n")
        folder = tmp_path / job
        _noted_run(folder, {"updated": 2}, 0)
        _result_xlsx(folder / "result.xlsx", ["updated", "updated"])
        record = files.load_job(folder)
        checked = {"counts": {"change": 2}, "exit_code": 0}
        record["undo_check"] = {"summaries": [checked]}
        record["undo"] = {"summaries": [{"counts": {"updated": 1, "unsettled": 1}, "exit_code": 1}]}
        files.save_job(folder, record)
        _result_xlsx(folder / "undo.xlsx", ["updated", "unsettled"])
        html = (await client.get(f"/jobs/{job}")).text
    assert '<p id="undo-done">Undo stopped:</p>' in html
    assert 'id="undo-unsettled"><b>1</b> unsettled' in html
    assert 'id="resume-undo"' in html and '{"confirm": "2"}' in html


@pytest.mark.anyio
async def test_undo_s_rows_are_shown_by_the_sheet_s_row_number(tmp_path: Path) -> None:
    from batchphone.ui import files

    keys = Keys()
    async with _signed_in(_page(tmp_path, limit=10**6), keys) as client:
        job = await _uploaded(client, keys, "loginId,phone\na@example.com,+14155550101\n")
        folder = tmp_path / job
        _noted_run(folder, {"updated": 2}, 0)
        _result_xlsx(folder / "result.xlsx", ["updated", "updated"])  # lines 3 and 4
        _result_xlsx(folder / "undo-check.xlsx", ["change", "change"])  # its own lines
        record = files.load_job(folder)
        record["undo_check"] = {"summaries": [{"counts": {"change": 2}, "exit_code": 0}]}
        files.save_job(folder, record)
        html = (await client.get(f"/jobs/{job}")).text
    table = html[html.index('id="restores"') :]
    assert "<th>sheet row</th>" in table
    cells = re.findall(r'<td class="num">(\d+)</td>\s*<td>([^<]*)</td>', table)
    assert cells == [("3", "u1@example.com"), ("4", "u2@example.com")]


def test_a_task_is_seen_ended_only_once_its_notes_are_written() -> None:
    """The page reloads when a task ends: the job's notes (the plan, the run's summary) must be
    there by then, or the reloaded page shows no plan and a run is refused."""
    import io
    import subprocess

    from batchphone.ui.tasks import Task, Tasks

    process = subprocess.Popen(["true"])
    task = Task(id="t1", job_id="j", kind="check", out=None, process=process)
    seen: list[str] = []
    summary = '{"event": "summary", "step": 1, "summary": {"counts": {}, "exit_code": 0}}\n'
    Tasks({}, None)._follow(task, io.StringIO(summary), lambda t: seen.append(t.state))
    assert seen == ["running"]
    assert task.state == "done" and task.exit_code == 0


def test_library_messages_reach_the_page_in_its_words() -> None:
    """The library names options as keywords (``login_id_column=...``): the page names its own
    controls by their labels and any other option by the flag, never a Python keyword."""
    from batchphone.ui.tasks import Task, _apply, _stopped, page_words

    no_column = 'fix.csv: no column "user" (columns found: loginId, phone; use login_id_column=...)'
    assert page_words(no_column) == (
        'fix.csv: no column "user" (columns found: loginId, phone; use the Login id column setting)'
    )
    assert page_words("has a single column \"a|b\" (use delimiter='|')") == (
        "has a single column \"a|b\" (use --delimiter '|')"
    )
    task = Task(id="t1", job_id="j", kind="check", out=None)
    _apply(task, {"event": "error", "message": no_column, "exit_code": 2})
    assert task.error is not None and "login_id_column=" not in task.error
    stopped = {
        "exit_code": 3,
        "stopped_reason": "the answers cannot be trusted (check base_url=...)",
    }
    assert _stopped([stopped], 3) == "stopped: the answers cannot be trusted (check --base-url)"


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_check_that_fails_names_the_page_s_control_not_a_keyword(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    keys = Keys()
    async with _signed_in(_page(work, limit=10**6), keys) as client:
        job = await _uploaded(client, keys, "loginId,phone\na@example.com,+14155550101\n")
        options = {"login_id_column": "user", "phone_column": "phone"}
        check = await _post(client, keys, f"/jobs/{job}/check", **options)
        view = await _finished(client, check.json()["task"])
        page = (await client.get(f"/jobs/{job}")).text
    assert view["state"] == "failed"
    expected = 'no column "user" (columns found: loginId, phone; use the Login id column setting)'
    assert str(view["error"]).endswith(expected)
    assert expected.replace('"', "&#34;") in page
    assert "login_id_column=" not in page


@pytest.mark.slow
@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_the_page_s_server_stops_on_ctrl_c_or_sigterm_with_130(
    signum: str, tmp_path: Path, samples: Path
) -> None:
    """A scheduler's SIGTERM stops ``batchphone ui`` as Ctrl-C does: its tasks are stopped,
    its forkserver's folder removed, exit 130 (it once died of SIGTERM, leaving them, and said
    "Aborted!" with exit 1 on Ctrl-C)."""
    import shutil
    import signal
    import tempfile

    from tests.zygote import Forked

    args = ["ui", "--work-dir", str(tmp_path / "work"), "--no-browser"]
    args += ["--emulator-users", str(samples / "users.csv")]
    log = tmp_path / "server.log"
    # its own temporary folder, short enough for the forkserver's socket path
    temp = Path(tempfile.mkdtemp(prefix="bp-", dir="/tmp"))
    try:
        env = {**os.environ, "TMPDIR": str(temp)}
        server = Forked("batchphone", args, env, tmp_path, stderr=log)
        deadline = time.monotonic() + 30
        while "open http" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "open http" in log.read_text(), log.read_text()
        assert [p.name[:5] for p in temp.iterdir()] == ["pymp-"]  # the forkserver's, warm
        server.send_signal(getattr(signal, signum))
        assert server.wait(30) == 130, log.read_text()
        assert log.read_text().rstrip().endswith("batchphone ui: stopped")
        assert list(temp.iterdir()) == []  # the forkserver's folder went with the server
    finally:
        shutil.rmtree(temp, ignore_errors=True)
