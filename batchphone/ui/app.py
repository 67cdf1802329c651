"""The page's routes: Starlette, Jinja2 templates, a little JavaScript; every step a public
API call made by a task (``tasks.py``), every file in the work folder (``files.py``)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from batchphone.errors import InputError
from batchphone.ui import files
from batchphone.ui.security import Guard, Keys
from batchphone.ui.tasks import Task, Tasks

__all__ = ["Page", "build_app"]

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


@dataclass(frozen=True, slots=True)
class Page:
    """What the server was started with."""

    work: Path
    port: int
    banner: str
    live: bool
    upload_limit: int
    flags: dict[str, Any]
    config_path: Path | None
    emulator_state: Path | None = None
    emulator_users: Path | None = None


class _Server:
    def __init__(self, page: Page, keys: Keys) -> None:
        self.page = page
        self.keys = keys
        self.tasks = Tasks(page.flags, page.config_path)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.filters["seconds"] = _seconds
        self.jobs_lock = threading.Lock()

    # -- helpers -------------------------------------------------------------------------
    def render(self, request: Request, name: str, **context: Any) -> Response:
        context.update(
            page=self.page,
            csrf=self.keys.csrf,
            meaning=MEANING,
            undo_meaning=UNDO_MEANING,
            result_meaning=RESULT_MEANING,
        )
        return self.templates.TemplateResponse(request, name, context)

    def folder(self, job_id: str) -> Path:
        folder = files.job_dir(self.page.work, job_id)
        if folder is None:
            from starlette.exceptions import HTTPException

            raise HTTPException(404, "no such job")
        return folder

    def update(self, folder: Path, **changes: Any) -> dict[str, Any]:
        with self.jobs_lock:
            record = files.load_job(folder)
            record.update(changes)
            files.save_job(folder, record)
            return record

    def task_flags(self) -> dict[str, Any]:
        """The emulator's users seed only a state file that does not exist yet (a second
        seeding would be refused, as the CLI refuses it)."""
        flags: dict[str, Any] = {}
        if self.page.emulator_state is not None:
            flags["emulator_state"] = str(self.page.emulator_state)
            if self.page.emulator_users is not None and not self.page.emulator_state.exists():
                flags["emulator_users"] = str(self.page.emulator_users)
        return flags

    def start(
        self,
        folder: Path,
        kind: str,
        steps: list[dict[str, Any]],
        base: dict[str, Any] | None = None,
    ) -> Task | JSONResponse:
        """Start a task for ``steps``; its outcome goes into the job's notes when it ends."""
        going = self.tasks.running(folder.name)
        if going:
            assert going[0].process is not None
            return _error(
                409,
                f"a {going[0].kind} of this file is going (pid {going[0].process.pid}): "
                "wait for it, or stop it",
            )
        if self.page.emulator_state is not None and self.tasks.running():
            # one emulated project in one state file: a second process would overwrite the
            # first one's users when it ends
            return _error(409, "the emulated project is busy with another task: wait for it")
        key = kind.replace("-", "_")

        def ended(task: Task) -> None:
            with self.jobs_lock:
                record = files.load_job(folder)
                record[key] = {**record.get(key, {}), **_outcome(task)}
                files.save_job(folder, record)

        with self.jobs_lock:  # the notes name the task before it can end
            task = self.tasks.start(
                folder.name, kind, steps, folder / "tasks.log", ended, self.task_flags()
            )
            record = files.load_job(folder)
            record[key] = {**(base or {}), "task": task.id, "started": task.started}
            files.save_job(folder, record)
        return task

    # -- pages ---------------------------------------------------------------------------
    async def index(self, request: Request) -> Response:
        import anyio

        runs, names = await anyio.to_thread.run_sync(self._history)
        return self.render(request, "index.html", runs=runs, names=names)

    def _history(self) -> tuple[list[files.FoundRun], dict[str, str]]:
        runs = files.find_runs(self.page.work)
        names: dict[str, str] = {}
        for run in runs:
            if run.job_id is not None and run.job_id not in names:
                names[run.job_id] = files.load_job(self.page.work / run.job_id).get("name", "")
        return runs, names

    async def job(self, request: Request) -> Response:
        import anyio

        folder = self.folder(request.path_params["job"])
        query = dict(request.query_params)
        context = await anyio.to_thread.run_sync(self._job_context, folder, query)
        running = self.tasks.running(folder.name)
        return self.render(request, "job.html", running=running[0] if running else None, **context)

    def _job_context(self, folder: Path, query: dict[str, str]) -> dict[str, Any]:
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
            read_error = exc.message
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

    # -- actions -------------------------------------------------------------------------
    async def upload(self, request: Request) -> Response:
        name = request.headers.get("x-filename", "")
        from urllib.parse import unquote

        name = unquote(name)
        suffix = Path(name).suffix.lower()
        if suffix not in (".csv", ".tsv", ".xlsx", ".parquet", ".jsonl"):
            return _error(400, f"{suffix or 'this file type'} is not read: choose a CSV, TSV, "
                               "XLSX, Parquet or JSONL file")  # fmt: skip
        limit = self.page.upload_limit
        declared = request.headers.get("content-length")
        too_large = f"the file is larger than the limit of {_size(limit)}: nothing was kept"
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return _error(413, too_large)
        try:
            job_id = await files.new_job(self.page.work, name, request.stream(), limit)
        except files.UploadTooLarge:
            return _error(413, too_large)
        return JSONResponse({"job": job_id, "url": f"/jobs/{job_id}"})

    async def check(self, request: Request) -> Response:
        folder = self.folder(request.path_params["job"])
        record = files.load_job(folder)
        if record.get("run"):
            return _error(409, "this file has a run: upload it again to check other settings")
        body = await _json(request)
        settings = {
            "sheet": body.get("sheet") or None,
            "login_id_column": body.get("login_id_column") or None,
            "phone_column": body.get("phone_column") or None,
            "default_region": body.get("default_region") or None,
            "verified": {"true": True, "false": False}.get(str(body.get("verified"))),
            "allow_remove": bool(body.get("allow_remove")),
            "api": "batch" if body.get("api") == "batch" else "update",
        }
        self.update(folder, settings=settings)
        source = str(folder / record["name"])
        rows = _row_options(settings)
        steps = [
            {"command": "validate", "input": source, "options": rows},
            {
                "command": "plan",
                "input": source,
                "out": str(folder / files.OUTPUTS["plan"]),
                "options": {**rows, "api": settings["api"]},
            },
        ]
        started = self.start(folder, "check", steps)
        return started if isinstance(started, Response) else JSONResponse({"task": started.id})

    async def run(self, request: Request) -> Response:
        folder = self.folder(request.path_params["job"])
        record = files.load_job(folder)
        body = await _json(request)
        plan = (record.get("check") or {}).get("plan")
        if not plan:
            return _error(409, "check the file first")
        previous = record.get("run") or {}
        if previous.get("options"):  # a resume: the same call again
            options = previous["options"]
        else:
            changes = int(plan["counts"].get("change", 0))
            if str(body.get("confirm")) != str(changes):
                return _error(409, f"confirm the run of {changes} changes first")
            canary = body.get("canary")
            options = {**_row_options(record["settings"]), "api": record["settings"]["api"]}
            if canary not in (None, "", 0, "0"):
                if not str(canary).isdigit():
                    return _error(400, "canary: a whole number of rows")
                options["canary"] = int(canary)
        steps = [
            {
                "command": "run",
                "input": str(folder / record["name"]),
                "out": str(folder / files.OUTPUTS["result"]),
                "options": options,
            }
        ]
        started = self.start(folder, "run", steps, base={"options": options})
        return started if isinstance(started, Response) else JSONResponse({"task": started.id})

    async def undo(self, request: Request) -> Response:
        folder = self.folder(request.path_params["job"])
        record = files.load_job(folder)
        body = await _json(request)
        if request.path_params["kind"] not in ("undo", "undo-check"):
            return _error(404, "no such action")
        dry = request.path_params["kind"] == "undo-check"
        result = folder / files.OUTPUTS["result"]
        if not result.is_file():
            return _error(409, "no run to undo")
        checking = record.get("undo_check") or {}
        if dry:
            remove = bool(body.get("allow_remove")) or bool(record["settings"].get("allow_remove"))
        else:
            remove = bool(checking.get("allow_remove"))
        options: dict[str, Any] = {"allow_remove": remove}
        if dry:
            options["dry_run"] = True
        else:
            checked = (checking.get("summaries") or [{}])[-1]
            counts = checked.get("counts") or {}
            restores = int(counts.get("change", 0)) + int(counts.get("would_update", 0))
            if str(body.get("confirm")) != str(restores):
                return _error(409, f"confirm the undo of {restores} users first")
        kind = "undo-check" if dry else "undo"
        base = {"allow_remove": remove} if dry else None
        steps = [
            {
                "command": "undo",
                "input": str(result),
                "out": str(folder / files.OUTPUTS[kind]),
                "options": options,
            }
        ]
        started = self.start(folder, kind, steps, base=base)
        return started if isinstance(started, Response) else JSONResponse({"task": started.id})

    async def task(self, request: Request) -> Response:
        task = self.tasks.get(request.path_params["task"])
        if task is None:
            return _error(404, "no such task")
        return JSONResponse(task.view())

    async def stop(self, request: Request) -> Response:
        task = self.tasks.get(request.path_params["task"])
        if task is None:
            return _error(404, "no such task")
        self.tasks.stop(task)
        return JSONResponse(task.view())

    async def download(self, request: Request) -> Response:
        folder = self.folder(request.path_params["job"])
        record = files.load_job(folder)
        name, fmt = request.path_params["name"], request.path_params["fmt"]
        short = name == "short"
        source = folder / files.OUTPUTS["result" if short else name] if (
            short or name in files.OUTPUTS
        ) else None  # fmt: skip
        if source is None or fmt not in ("xlsx", "csv") or not source.is_file():
            return _error(404, "no such file")
        if files.lock_holder(source) is not None:
            return _error(409, "the file is being written: wait for the task to end")
        stem = Path(record["name"]).stem
        filename = f"{stem}-{name}.{fmt}"
        disposition = {"content-disposition": f'attachment; filename="{filename}"'}
        if fmt == "xlsx" and not short:
            return FileResponse(source, headers=disposition, media_type=_MEDIA[fmt])
        import anyio

        data = await anyio.to_thread.run_sync(files.converted, source, fmt, short)
        return Response(data, media_type=_MEDIA[fmt], headers=disposition)


_MEDIA = {
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "csv": "text/csv; charset=utf-8",
}


def _outcome(task: Task) -> dict[str, Any]:
    outcome: dict[str, Any] = {
        "task": task.id,
        "summaries": task.summaries,
        "error": task.error,
        "exit_code": task.exit_code,
        "canary": task.canary,
    }
    if task.kind == "check":
        by_step = {0: "validate", 1: "plan"}
        for number, summary in enumerate(task.summaries):
            outcome[by_step.get(number, str(number))] = summary
    return outcome


def _file_counts(path: Path, holder: str | None) -> dict[str, int] | None:
    """A result file's rows by status, as it is now (the CLI may have resumed the page's run
    since); ``None`` while a process writes it, or when it is not there or cannot be read."""
    if holder is not None or not path.is_file():
        return None
    try:
        return files.status_counts(path)
    except (InputError, OSError):
        return None


def _row_options(settings: dict[str, Any]) -> dict[str, Any]:
    names = ("sheet", "login_id_column", "phone_column", "default_region", "verified")
    options = {name: settings.get(name) for name in names if settings.get(name) is not None}
    if settings.get("allow_remove"):
        options["allow_remove"] = True
    return options


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _size(limit: int) -> str:
    return f"{limit / 1_000_000:g} MB" if limit >= 1_000_000 else f"{limit:,} bytes"


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
    server = _Server(page, keys)
    # the country names take a second to gather: before the first page needs them
    threading.Thread(target=_regions, daemon=True).start()
    routes = [
        Route("/", server.index),
        Route("/upload", server.upload, methods=["POST"]),
        Route("/jobs/{job}", server.job),
        Route("/jobs/{job}/check", server.check, methods=["POST"]),
        Route("/jobs/{job}/run", server.run, methods=["POST"]),
        Route("/jobs/{job}/{kind:str}", server.undo, methods=["POST"]),
        Route("/jobs/{job}/files/{name}.{fmt}", server.download),
        Route("/tasks/{task}", server.task),
        Route("/tasks/{task}/stop", server.stop, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes)
    guarded = Guard(app, keys, page.port)
    return guarded, server.tasks  # type: ignore[return-value]
