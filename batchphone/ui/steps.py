"""The page's steps: check, run and undo, each the public API calls a task makes, and the
task endpoints the page polls and stops."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from batchphone.ui import files
from batchphone.ui.jobs import Jobs, error, json_body
from batchphone.ui.tasks import Task

__all__ = ["Steps"]


class Steps:
    """The handlers that start, follow and stop a job's tasks."""

    def __init__(self, jobs: Jobs) -> None:
        self.jobs = jobs

    async def check(self, request: Request) -> Response:
        """Validate, then plan, with the columns and options chosen."""
        folder = self.jobs.folder(request.path_params["job"])
        record = files.load_job(folder)
        if record.get("run"):
            return error(409, "this file has a run: upload it again to check other settings")
        body = await json_body(request)
        settings = {
            "sheet": body.get("sheet") or None,
            "login_id_column": body.get("login_id_column") or None,
            "phone_column": body.get("phone_column") or None,
            "default_region": body.get("default_region") or None,
            "verified": {"true": True, "false": False}.get(str(body.get("verified"))),
            "allow_remove": bool(body.get("allow_remove")),
            "api": "batch" if body.get("api") == "batch" else "update",
        }
        self.jobs.update(folder, settings=settings)
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
        return _started(self.jobs.start(folder, "check", steps))

    async def run(self, request: Request) -> Response:
        """The run the check planned, once its number of changes is confirmed; or its resume."""
        folder = self.jobs.folder(request.path_params["job"])
        record = files.load_job(folder)
        body = await json_body(request)
        plan = (record.get("check") or {}).get("plan")
        if not plan:
            return error(409, "check the file first")
        previous = record.get("run") or {}
        if previous.get("options"):  # a resume: the same call again
            options = previous["options"]
        else:
            changes = int(plan["counts"].get("change", 0))
            if str(body.get("confirm")) != str(changes):
                return error(409, f"confirm the run of {changes} changes first")
            canary = body.get("canary")
            options = {**_row_options(record["settings"]), "api": record["settings"]["api"]}
            if canary not in (None, "", 0, "0"):
                if not str(canary).isdigit():
                    return error(400, "canary: a whole number of rows")
                options["canary"] = int(canary)
        steps = [
            {
                "command": "run",
                "input": str(folder / record["name"]),
                "out": str(folder / files.OUTPUTS["result"]),
                "options": options,
            }
        ]
        return _started(self.jobs.start(folder, "run", steps, base={"options": options}))

    async def undo(self, request: Request) -> Response:
        """``undo-check``: what undo would restore (a dry run); ``undo``: restore, once the
        number of users the check found is confirmed."""
        folder = self.jobs.folder(request.path_params["job"])
        record = files.load_job(folder)
        body = await json_body(request)
        if request.path_params["kind"] not in ("undo", "undo-check"):
            return error(404, "no such action")
        dry = request.path_params["kind"] == "undo-check"
        result = folder / files.OUTPUTS["result"]
        if not result.is_file():
            return error(409, "no run to undo")
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
                return error(409, f"confirm the undo of {restores} users first")
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
        return _started(self.jobs.start(folder, kind, steps, base=base))

    async def task(self, request: Request) -> Response:
        """What a task did so far (the page polls it)."""
        task = self.jobs.tasks.get(request.path_params["task"])
        if task is None:
            return error(404, "no such task")
        return JSONResponse(task.view())

    async def stop(self, request: Request) -> Response:
        """Stop a task as Ctrl-C stops the CLI."""
        task = self.jobs.tasks.get(request.path_params["task"])
        if task is None:
            return error(404, "no such task")
        self.jobs.tasks.stop(task)
        return JSONResponse(task.view())


def _started(started: Task | JSONResponse) -> Response:
    return started if isinstance(started, Response) else JSONResponse({"task": started.id})


def _row_options(settings: dict[str, Any]) -> dict[str, Any]:
    names = ("sheet", "login_id_column", "phone_column", "default_region", "verified")
    options = {name: settings.get(name) for name in names if settings.get(name) is not None}
    if settings.get("allow_remove"):
        options["allow_remove"] = True
    return options
