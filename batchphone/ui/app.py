"""The page's routes and its two pages: Starlette, Jinja2 templates, a little JavaScript.

Every step is a public API call made by a task (``steps.py``, ``tasks.py``), every file is in
the work folder (``files.py``, ``transfers.py``); this module shows them in the page's words.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from batchphone.errors import InputError
from batchphone.ui import files
from batchphone.ui.jobs import Jobs, Page
from batchphone.ui.security import Guard, Keys
from batchphone.ui.steps import Steps
from batchphone.ui.tasks import Tasks, page_words
from batchphone.ui.transfers import Transfers

__all__ = ["build_app"]

HERE = Path(__file__).parent
#: rows of a file the page lists at once (the downloads have them all)
ROWS_SHOWN = 500
#: what a plan's status means, in the words of the page (other statuses show as they are)
MEANING = {
    "change": "will change",
    "unchanged": "already so: not sent",
    "not_found": "no such user: not sent",
    "conflict": "phone is another user's login id: not sent",
    "invalid": "not sent",
    "duplicate": "repeats an earlier row: not sent",
    "failed": "could not be read: not sent",
    "would_update": "will be restored",
    "skipped": "left as is",
    "updated": "updated",
    "not_attempted": "not sent yet",
    "unsettled": "answer lost: may have been applied",
}
#: The reasons whose explanation names a flag of the command line, in the words of the page.
PAGE_EXPLANATIONS = {
    "MISSING_REGION": "national number without a country: choose a default region, add a "
    "region column, or write it as +<country code>...",
    "EMPTY_PHONE": "empty phone: not sent (tick 'An empty phone removes the user's phone' to "
    "remove it)",
    "IN_FLIGHT": "the call was on its way when the run ended: Resume reads the user back and "
    "settles the row",
    "ANSWER_LOST": "the call was sent but its answer was lost (timeout, dropped connection, "
    "server error), so it may have been applied: Resume reads the user back and settles the "
    "row; undo restores it if it was applied",
    "NOT_APPLIED": "the call's answer was lost and reading the user back showed the update was "
    "not applied: drop the file again to send it",
    "INTERRUPTED": "the run was stopped before this row was sent: Resume sends it",
    "REMOVE_PHONE": "the user's phone is removed: the phone to set is empty, and removing is "
    "allowed (the user had none before the run, for an undo)",
    "UNREACHABLE": "not sent: nothing answered at the API base URL (connection refused or no "
    "such host); start batchphone ui with the right --base-url, then Resume",
}
#: a result's statuses that call for a look: not final yet, or not changed as asked
ATTENTION = ("unsettled", "failed", "not_attempted")
#: the same for a run's result
RESULT_MEANING = {**MEANING, "failed": "not changed"}
#: the same for an undo's check (a plan of the restore)
UNDO_MEANING = {**MEANING, "change": "will be restored", "unchanged": "left as is"}


class _Pages:
    """The two pages: the history of the work folder, and a job's steps."""

    def __init__(self, jobs: Jobs, keys: Keys) -> None:
        self.jobs = jobs
        self.keys = keys
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.filters["seconds"] = _seconds
        self.templates.env.filters["page_words"] = page_words

    def render(self, request: Request, name: str, **context: Any) -> Response:
        context.update(
            page=self.jobs.page,
            csrf=self.keys.csrf,
            meaning=MEANING,
            undo_meaning=UNDO_MEANING,
            result_meaning=RESULT_MEANING,
        )
        return self.templates.TemplateResponse(request, name, context)

    async def index(self, request: Request) -> Response:
        """Every run in the work folder, newest first."""
        runs, names = await anyio.to_thread.run_sync(_history, self.jobs.page.work)
        return self.render(request, "index.html", runs=runs, names=names)

    async def job(self, request: Request) -> Response:
        """A job's steps, read from its files."""
        folder = self.jobs.folder(request.path_params["job"])
        query = dict(request.query_params)
        context = await anyio.to_thread.run_sync(_job_context, folder, query)
        running = self.jobs.tasks.running(folder.name)
        return self.render(request, "job.html", running=running[0] if running else None, **context)


def _history(work: Path) -> tuple[list[files.FoundRun], dict[str, str]]:
    runs = files.find_runs(work)
    names: dict[str, str] = {}
    for run in runs:
        if run.job_id is not None and run.job_id not in names:
            names[run.job_id] = files.load_job(work / run.job_id).get("name", "")
    return runs, names


def _job_context(folder: Path, query: dict[str, str]) -> dict[str, Any]:
    """What the job's page shows, read from its files (in a worker thread)."""
    record = files.load_job(folder)
    settings = record.get("settings") or {}
    sheets: list[str] = []
    header: list[str] = []
    read_error = None
    wanted = query.get("sheet") or settings.get("sheet")
    try:
        sheets, sheet, header = files.sheet_headers(folder / record["name"], wanted)
    except InputError as exc:
        read_error = page_words(exc.message)
        sheet = None
    if not settings or sheet != settings.get("sheet"):
        # a new file or another sheet: guess its columns again
        settings = {"api": "update", **settings, "sheet": sheet}
        settings.update(files.guess_columns(header))
    status = query.get("status") or None
    plan_rows = None
    plan_path = folder / files.OUTPUTS["plan"]
    if (record.get("check") or {}).get("plan") and plan_path.is_file():
        plan_rows = files.read_rows(plan_path, status, ROWS_SHOWN)
    undo_rows = None
    check_path = folder / files.OUTPUTS["undo-check"]
    if (record.get("undo_check") or {}).get("summaries") and check_path.is_file():
        undo_rows = files.read_rows(check_path, None, ROWS_SHOWN)
    result = folder / files.OUTPUTS["result"]
    holder = files.lock_holder(result)
    result_counts = _file_counts(result, holder)
    attention = None
    if result_counts and any(result_counts.get(s) for s in ATTENTION):
        attention = files.read_rows(result, ATTENTION, ROWS_SHOWN)
    sheet_lines: dict[str | None, str | None] = {}
    if undo_rows is not None and result_counts:
        # undo's row N is the result file's row N: the sheet's row number is that one's line
        shown = files.read_rows(result, None, ROWS_SHOWN).rows
        sheet_lines = {r.get("row"): r.get("line") for r in shown if r.get("line")}
    return {
        "job": record,
        "settings": settings,
        "sheets": sheets,
        "header": header,
        "read_error": read_error,
        "regions": _regions(),
        "status": status,
        "plan_rows": plan_rows,
        "undo_rows": undo_rows,
        "sheet_lines": sheet_lines,
        "explain": _explain,
        "outputs": {k: (folder / v).is_file() for k, v in files.OUTPUTS.items()},
        "holder": holder,
        "result_counts": result_counts,
        "attention_rows": attention,
        "undo_counts": _file_counts(folder / files.OUTPUTS["undo"], holder),
    }


def _file_counts(path: Path, holder: str | None) -> dict[str, int] | None:
    """A result file's rows by status, as it is now (the CLI may have resumed the page's run
    since); ``None`` while a process writes it, or when it is not there or cannot be read."""
    if holder is not None or not path.is_file():
        return None
    try:
        return files.status_counts(path)
    except (InputError, OSError):
        return None


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    value = float(value)
    if value < 90:
        return f"{value:.0f} s"
    if value < 5400:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


_REGIONS: list[tuple[str, str]] = []


_REGIONS_LOCK = threading.Lock()


def _regions() -> list[tuple[str, str]]:
    """(ISO code, "Country (XX, +N)") of every region phonenumbers knows, by country name."""
    with _REGIONS_LOCK:
        if not _REGIONS:
            import phonenumbers
            from phonenumbers import geocoder

            found = []
            for region in phonenumbers.SUPPORTED_REGIONS:
                code = phonenumbers.country_code_for_region(region)
                example = phonenumbers.example_number(region)
                name = geocoder.country_name_for_number(example, "en") if example else ""
                found.append(
                    (region, f"{name} ({region}, +{code})" if name else f"{region} (+{code})")
                )
            _REGIONS.extend(sorted(found, key=lambda item: item[1]))
        return _REGIONS


def _explain(reason: str | None, message: str | None, undo: bool = False) -> str:
    if not reason:
        return ""
    if undo and reason == "EMPTY_PHONE":
        return (
            "the user had no phone before the run: left as is (tick 'Also remove the phones this "
            "run gave to users who had none' to remove it)"
        )
    from batchphone.models import Reason
    from batchphone.rows.prepare import EXPLANATIONS

    if reason in PAGE_EXPLANATIONS:
        return PAGE_EXPLANATIONS[reason]
    try:
        text = EXPLANATIONS.get(Reason(reason))
    except ValueError:
        text = None
    return text or (message or "")


def build_app(page: Page, keys: Keys) -> tuple[Starlette, Tasks]:
    """The page's ASGI app behind its guard, and the tasks it starts (to stop at shutdown)."""
    jobs = Jobs(page)
    pages, steps, transfers = _Pages(jobs, keys), Steps(jobs), Transfers(jobs)
    # the country names take a second to gather: before the first page needs them
    threading.Thread(target=_regions, daemon=True).start()
    routes = [
        Route("/", pages.index),
        Route("/upload", transfers.upload, methods=["POST"]),
        Route("/jobs/{job}", pages.job),
        Route("/jobs/{job}/check", steps.check, methods=["POST"]),
        Route("/jobs/{job}/run", steps.run, methods=["POST"]),
        Route("/jobs/{job}/{kind:str}", steps.undo, methods=["POST"]),
        Route("/jobs/{job}/files/{name}.{fmt}", transfers.download),
        Route("/tasks/{task}", steps.task),
        Route("/tasks/{task}/stop", steps.stop, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes)
    guarded = Guard(app, keys, page.port)
    return guarded, jobs.tasks  # type: ignore[return-value]
