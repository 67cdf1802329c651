"""What every handler of the page shares: what the server was started with, a job's folder
and notes (changed under one lock), the task that works on a job, and the page's JSON answers."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from batchphone.ui import files
from batchphone.ui.tasks import Task, Tasks

__all__ = ["Jobs", "Page", "error", "json_body"]


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


class Jobs:
    """The jobs of the work folder, and the tasks that work on them (one at a time per job)."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.tasks = Tasks(page.flags, page.config_path)
        self._lock = threading.Lock()

    def folder(self, job_id: str) -> Path:
        """The folder of job ``job_id``; a 404 when there is none."""
        folder = files.job_dir(self.page.work, job_id)
        if folder is None:
            raise HTTPException(404, "no such job")
        return folder

    def update(self, folder: Path, **changes: Any) -> dict[str, Any]:
        """Change the job's notes; the notes as they are now."""
        with self._lock:
            record = files.load_job(folder)
            record.update(changes)
            files.save_job(folder, record)
            return record

    def _task_flags(self) -> dict[str, Any]:
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
            return error(
                409,
                f"a {going[0].kind} of this file is going (pid {going[0].process.pid}): "
                "wait for it, or stop it",
            )
        if self.page.emulator_state is not None and self.tasks.running():
            # one emulated project in one state file: a second process would overwrite the
            # first one's users when it ends
            return error(409, "the emulated project is busy with another task: wait for it")
        key = kind.replace("-", "_")

        def ended(task: Task) -> None:
            with self._lock:
                record = files.load_job(folder)
                record[key] = {**record.get(key, {}), **_outcome(task)}
                files.save_job(folder, record)

        with self._lock:  # the notes name the task before it can end
            task = self.tasks.start(
                folder.name, kind, steps, folder / "tasks.log", ended, self._task_flags()
            )
            record = files.load_job(folder)
            record[key] = {**(base or {}), "task": task.id, "started": task.started}
            files.save_job(folder, record)
        return task


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


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object (``{}`` for anything else)."""
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def error(status: int, message: str) -> JSONResponse:
    """The page's error answer: ``{"error": message}``."""
    return JSONResponse({"error": message}, status_code=status)
