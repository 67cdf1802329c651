"""batchphone ui in a real headless Chromium, against an emulated project.

Drop a two-sheet XLSX with a number-typed phone cell, pick the sheet, check (the counts equal
``batchphone.plan`` on the same file), run with a canary at 4 calls a second, stop, resume,
download the XLSX, undo, and find the emulated users as they were. Screenshots of every step
are saved in the test's temporary folder.

Debian's ``chromium`` through Playwright pointed at the system browser (no browser download);
skipped when there is none. ``.ci/run`` installs it with apt.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = next(
    (found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), None
)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium chromium-driver)"
    ),
]

CHANGES = 16
WAIT_MS = 60_000


def _seed(folder: Path) -> tuple[Path, dict[str, str]]:
    """The emulated project's users: each with a phone (so that undo restores every one)."""
    phones = {f"user{i:02d}@example.com": f"+1415555{i:04d}" for i in range(CHANGES + 2)}
    path = folder / "users.csv"
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["loginId", "phone"])
        writer.writerows(phones.items())
    return path, phones


def _workbook(path: Path) -> None:
    """Sheet 1 is a note; sheet 2 ("Users") holds Email/Mobile rows, one phone a number."""
    from openpyxl import Workbook

    book = Workbook()
    notes = book.active
    assert notes is not None
    notes.title = "Notes"
    notes["A1"] = "Phones to fix, from the helpdesk"
    users = book.create_sheet("Users")
    users.append(["Email", "Mobile"])
    for i in range(CHANGES):
        users.append([f"user{i:02d}@example.com", f"(415) 777-{i:04d}"])  # national: US region
    users.append([f"user{CHANGES:02d}@example.com", f"+1415555{CHANGES:04d}"])  # unchanged
    users.append([f"user{CHANGES + 1:02d}@example.com", 4155550199])  # a number cell
    users.append(["ghost@example.com", "+14155550198"])  # no such user
    book.save(path)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """``batchphone ui`` on an emulated project, at a budget of 4 calls a second."""
    work = tmp_path / "work"
    work.mkdir()
    users, phones = _seed(tmp_path)
    state = tmp_path / "state.json"
    log = tmp_path / "server.log"
    args = [
        "ui", "--work-dir", str(work), "--no-browser",
        "--emulator-users", str(users), "--emulator-state", str(state), "--rate", "4/1",
    ]  # fmt: skip
    # the command a user types: the console script, whose page forks its tasks from the
    # standard library's forkserver (which must not run this script again in each task)
    script = Path(sys.executable).with_name("batchphone")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "batchphone"]
    with log.open("wb") as errors:
        process = subprocess.Popen(
            [*command, *args], stderr=errors, stdout=subprocess.DEVNULL, cwd=tmp_path
        )
    try:
        deadline = time.monotonic() + 30
        url = None
        while url is None and time.monotonic() < deadline and process.poll() is None:
            found = re.search(r"open (http://127\.0\.0\.1:\d+/\?token=\S+)", log.read_text())
            url = found.group(1) if found else None
            time.sleep(0.05)
        assert url is not None, log.read_text()
        yield {"url": url, "work": work, "state": state, "phones": phones, "log": log}
    finally:
        process.terminate()
        process.wait(timeout=30)


def _counts(texts: list[str]) -> dict[str, int]:
    counts = {}
    for text in texts:
        number, _, status = text.strip().partition(" ")
        if number.isdigit():
            counts[status.strip()] = int(number)
    return counts


def _live_count(page: Any, status: str) -> int:
    cell = page.locator(f"#live-counts .status-{status} b")
    return int(cell.inner_text()) if cell.count() else 0


def test_the_whole_fix_in_a_browser(server: dict[str, Any], tmp_path: Path) -> None:
    import batchphone
    from batchphone.emulator import load_users
    from batchphone.emulator.statefile import load_state

    shots = tmp_path / "screenshots"
    shots.mkdir()
    sheet = tmp_path / "fix.xlsx"
    _workbook(sheet)

    def shot(page: Any, name: str) -> None:
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

    # the CLI's plan of the same file on the same users (before Playwright runs its own loop)
    cli = batchphone.plan(
        sheet,
        out=tmp_path / "cli-plan.xlsx",
        target=batchphone.Target.emulator(load_users(tmp_path / "users.csv")),
        sheet="Users",
        login_id_column="Email",
        phone_column="Mobile",
        default_region="US",
    )

    # imported here, not at collection: every worker collects this file, one runs it
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        viewport = {"width": 1280, "height": 900}
        context = browser.new_context(accept_downloads=True, viewport=viewport)
        context.set_default_timeout(WAIT_MS)
        page = context.new_page()
        page.goto(server["url"])
        assert page.url.endswith("/")  # the token is out of the address bar
        assert page.inner_text("#target") == "Rehearsal: emulated project (state.json)"
        shot(page, "01-start")

        # 1. the file, its sheet and columns
        with page.expect_navigation():
            page.set_input_files("#file", str(sheet))
        assert page.locator("#sheet").input_value() == "Notes"  # the first sheet by default
        with page.expect_navigation():
            page.select_option("#sheet", "Users")
        assert page.locator("#login_id_column").input_value() == "Email"
        assert page.locator("#phone_column").input_value() == "Mobile"
        page.select_option("#default_region", "US")
        shot(page, "02-columns")

        # 2. the check: the same counts as batchphone.plan on the same file
        page.click("#check")
        page.wait_for_selector("#plan-counts")
        shown = _counts(page.locator("#plan-counts li").all_inner_texts())
        assert shown == cli.counts
        assert shown == {"change": CHANGES, "unchanged": 1, "invalid": 1, "not_found": 1}
        assert f"{cli.planned_calls} API calls" in page.inner_text("#plan-figures")
        shot(page, "03-plan")
        page.click("#plan-counts a:has-text('invalid')")
        row = page.locator("table.rows tbody tr")
        assert row.count() == 1
        assert "NUMERIC_CELL" in row.inner_text() and "store phones as text" in row.inner_text()
        assert row.locator("td").first.inner_text() == str(CHANGES + 3)  # the sheet's row
        page.goto(page.url.split("?")[0])

        # 3. approve, with a canary, after a confirmation naming the count and the project
        page.fill("#canary-size", "2")
        page.click("button[data-show='confirm-run']")
        confirm = page.inner_text("#confirm-run")
        assert f"Update the phones of {CHANGES} users" in confirm
        assert "Rehearsal: emulated project (state.json)" in confirm
        shot(page, "04-confirm")
        page.click("#confirm-run-button")

        # 4. watch, stop mid-run; a second start is refused while it goes
        page.wait_for_selector("#task[data-kind='run']")
        refused = page.evaluate(
            """async () => {
                const r = await fetch(location.pathname + "/run", {method: "POST",
                  headers: {"X-CSRF-Token": document.querySelector('meta[name=csrf-token]').content,
                            "Content-Type": "application/json"}, body: "{}"});
                return [r.status, (await r.json()).error];
            }"""
        )
        assert refused[0] == 409
        assert re.search(r"a run of this file is going \(pid \d+\)", refused[1])
        sync_api.expect(page.locator("#canary")).to_contain_text("passed", timeout=WAIT_MS)
        sync_api.expect(page.locator("#figures")).to_contain_text("calls/s", timeout=WAIT_MS)
        shot(page, "05-running")
        # the stop follows the count at once: the rows left take 3 s at 4 calls a second
        deadline = time.monotonic() + 60
        while _live_count(page, "updated") < 4 and time.monotonic() < deadline:
            page.wait_for_timeout(50)
        page.click("#stop")
        page.wait_for_selector("#resume")
        stopped = _counts(page.locator("#result ul.counts li").all_inner_texts())
        assert stopped.get("not_attempted", 0) > 0, stopped
        assert 4 <= stopped["updated"] < CHANGES
        assert "Canary passed" in page.inner_text("#canary-verdict")
        # the rows not sent yet, by the sheet's row, with what to do in the page's words
        attention = page.locator("#attention tbody tr")
        assert attention.count() == stopped["not_attempted"]
        assert "Resume sends it" in attention.first.inner_text()
        shot(page, "06-stopped")

        # resume: the rows already final are not sent again
        with page.expect_navigation():  # past the stopped page, which has downloads too
            page.click("#resume")
        page.wait_for_selector("#downloads")
        done = _counts(page.locator("#result ul.counts li").all_inner_texts())
        assert done == {"updated": CHANGES, "unchanged": 1, "invalid": 1, "not_found": 1}
        shot(page, "07-done")

        # 5. the result as XLSX, read with openpyxl, and as CSV
        with page.expect_download() as info:
            page.click("#download-xlsx")
        result = tmp_path / "downloaded.xlsx"
        info.value.save_as(result)
        from openpyxl import load_workbook

        rows = list(load_workbook(result, read_only=True).active.iter_rows(values_only=True))
        header = list(rows[0])
        records = [dict(zip(header, values, strict=False)) for values in rows[1:]]
        updated = [r for r in records if r["status"] == "updated"]
        assert len(updated) == CHANGES
        assert {r["phone"] for r in updated} == {f"+1415777{i:04d}" for i in range(CHANGES)}
        with page.expect_download() as info:
            page.click("#download-csv")
        text = Path(info.value.path()).read_text(encoding="utf-8")
        assert [r["status"] for r in csv.DictReader(io.StringIO(text))] == [
            r["status"] for r in records
        ]

        # 6. undo: what it would restore first, then a confirmation, then the undo
        page.click("#undo-check")
        page.wait_for_selector("#restores")
        assert page.inner_text("#restores") == str(CHANGES)
        shot(page, "08-undo-check")
        page.click("button[data-show='confirm-undo']")
        assert f"Restore the phones of {CHANGES} users" in page.inner_text("#confirm-undo")
        page.click("#confirm-undo-button")
        page.wait_for_selector("#undo-done")
        shot(page, "09-undone")

        # 7. the history lists the page's runs
        page.goto(server["url"].split("?")[0])
        history = page.inner_text("table.history")
        for name in ("plan", "result", "undo-check", "undo"):
            assert re.search(rf"\b{name}\b", history), history
        shot(page, "10-history")
        browser.close()

    users = {u["loginIds"][0]: u.get("phone", "") for u in load_state(server["state"])}
    assert users == server["phones"]  # every emulated user as before the run
    log = server["log"].read_text()
    assert "@example.com" not in log and "+1415" not in log and "ui_task_ended" in log
    assert os.stat(server["work"]).st_mode  # (the work folder still there for the screenshots)
