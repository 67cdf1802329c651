"""The page's tasks: each a ``batchphone.ui.worker`` process making public API calls.

A task is a process of its own (forked by ``ui.launcher``), so that Stop is the SIGINT a Ctrl-C
sends (the run ends as the CLI's does: nothing new is sent, the result file is written) and a run
holds its lock like any other process. A thread reads its JSON lines into the task's state, which
the page polls.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchphone.logs import get_logger
from batchphone.options import flagged
from batchphone.ui.launcher import Worker, warm

__all__ = ["Task", "Tasks", "page_words"]

log = get_logger()


@dataclass
class Task:
    """One child process and what it reported so far (counts only, no row's content)."""

    id: str
    job_id: str
    kind: str
    out: str | None
    started: float = field(default_factory=time.time)
    process: Worker | None = None
    state: str = "running"  # running, stopping, done, failed
    step: int = 0
    total: int = 0
    done_before: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    attempts: int = 0
    calls_per_second: float | None = None
    pause_until: float | None = None
    canary: str | None = None
    summaries: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    exit_code: int | None = None
    step_started: float = field(default_factory=time.time)

    def view(self) -> dict[str, Any]:
        """What the page shows of the task (JSON)."""
        finished = sum(self.counts.values())
        now = time.time()
        elapsed = max(now - self.step_started, 1e-3)
        remaining = max(self.total - self.done_before - finished, 0)
        eta = None
        if finished and remaining and self.state == "running":
            eta = remaining / (finished / elapsed)
            if self.calls_per_second:
                eta = max(eta, remaining / self.calls_per_second)
        pause = self.pause_until - now if self.pause_until and self.pause_until > now else None
        return {
            "id": self.id,
            "job": self.job_id,
            "kind": self.kind,
            "state": self.state,
            "step": self.step,
            "total": self.total,
            "done": self.done_before + finished,
            "counts": self.counts,
            "attempts": self.attempts,
            "calls_per_second": self.calls_per_second,
            "eta_s": eta,
            "pause_s": pause,
            "canary": self.canary,
            "summaries": self.summaries,
            "error": self.error,
            "exit_code": self.exit_code,
            "elapsed_s": now - self.started,
        }


class Tasks:
    """The tasks of this server, started one process each."""

    def __init__(self, flags: dict[str, Any], config_path: Path | None) -> None:
        self.flags = flags
        self.config_path = config_path
        self._tasks: dict[str, Task] = {}
        self._lock = threading.Lock()
        self._count = 0
        warm()  # ready by the first click

    def get(self, task_id: str) -> Task | None:
        """The task ``task_id``, if this server started it."""
        return self._tasks.get(task_id)

    def running(self, job_id: str | None = None) -> list[Task]:
        """Tasks whose process has not ended (of job ``job_id``, when given)."""
        return [
            task
            for task in self._tasks.values()
            if task.state in ("running", "stopping") and job_id in (None, task.job_id)
        ]

    def start(
        self,
        job_id: str,
        kind: str,
        steps: list[dict[str, Any]],
        log_path: Path,
        on_end: Callable[[Task], None],
        flags: dict[str, Any] | None = None,
    ) -> Task:
        """Start a worker for ``steps`` (public API calls); ``on_end`` runs when it exits."""
        with self._lock:
            self._count += 1
            task_id = f"t{self._count}-{os.urandom(4).hex()}"
        out = steps[-1].get("out")
        task = Task(id=task_id, job_id=job_id, kind=kind, out=out)
        spec = {
            "flags": {**self.flags, **(flags or {})},
            "config_path": str(self.config_path) if self.config_path else None,
            "steps": steps,
        }
        task.process = Worker(spec, log_path)
        self._tasks[task_id] = task
        log.info("ui_task_started", task=task_id, kind=kind)
        thread = threading.Thread(
            target=self._follow, args=(task, task.process.lines(), on_end), daemon=True
        )
        thread.start()
        return task

    def stop(self, task: Task) -> None:
        """Stop as Ctrl-C does: nothing new is sent, the result file is written."""
        if task.process is not None and task.process.poll() is None:
            task.state = "stopping"
            task.process.send_signal(signal.SIGINT)
            log.info("ui_task_stopping", task=task.id)

    def stop_all(self) -> None:
        """Stop every task and wait for them (the server is shutting down)."""
        for task in self.running():
            self.stop(task)
        for task in list(self._tasks.values()):
            if task.process is not None:
                try:
                    task.process.wait(timeout=30)
                except TimeoutError:
                    task.process.kill()

    def _follow(self, task: Task, lines: Iterator[str], on_end: Callable[[Task], None]) -> None:
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            _apply(task, event)
        assert task.process is not None
        code = task.process.wait()
        task.exit_code = code if task.exit_code is None else task.exit_code
        failed = bool(task.error) or code not in (0, 1, 130)
        if task.error is None and code not in (0, 1, 130):
            task.error = _stopped(task.summaries, code)
        task.pause_until = None
        try:
            on_end(task)
        finally:
            # only now: a page that sees the task ended reloads, and must find its notes written
            task.state = "failed" if failed else "done"
            log.info("ui_task_ended", task=task.id, kind=task.kind, exit_code=code)


def _apply(task: Task, event: dict[str, Any]) -> None:
    name = event.get("event")
    if name == "start":
        task.step = int(event.get("step", 0))
        task.total = int(event["total"])
        task.done_before = int(event["done"])
        task.calls_per_second = event.get("calls_per_second")
        task.counts = {}
        task.attempts = 0
        task.step_started = time.time()
    elif name == "progress":
        task.counts = dict(event["counts"])
        task.attempts = int(event.get("attempts", 0))
    elif name == "paused":
        task.pause_until = time.time() + float(event["seconds"])
        if event.get("calls_per_second") is not None:
            task.calls_per_second = event["calls_per_second"]
    elif name == "log":
        if event.get("name") == "canary_passed":
            task.canary = f"passed: the first {event.get('rows', '?')} updates stuck"
        elif event.get("name") == "canary_failed":
            task.canary = (
                f"failed: {event.get('mismatches', '?')} of {event.get('rows', '?')} "
                "updates did not stick; nothing more was sent"
            )
    elif name == "summary":
        task.summaries.append(event["summary"])
    elif name == "error":
        task.error = page_words(str(event.get("message")))
        task.exit_code = int(event.get("exit_code", 1))


def _stopped(summaries: list[dict[str, Any]], code: int) -> str:
    """Why a task ended with ``code``: the stop its last summary gives (a run that stopped at an
    unreachable API, a 401, a full disk ends with a summary and exit 3 or 4), else exit code."""
    last = summaries[-1] if summaries else {}
    if last.get("exit_code") == code and last.get("stopped_reason"):
        return f"stopped: {page_words(last['stopped_reason'])}"
    return f"the task ended unexpectedly (exit {code})"


#: The options the page sets with a control of its own, by the control's label.
_PAGE_CONTROLS = {
    "login_id_column": "Login id column",
    "phone_column": "Phone column",
    "sheet": "Sheet",
    "default_region": "Default region",
}
_CONTROL_NAMED = re.compile(r"(?<![\w.-])(" + "|".join(_PAGE_CONTROLS) + r")=\.\.\.")


def page_words(message: str) -> str:
    """A library message (it names options as keywords: ``login_id_column=...``) in the page's
    words: an option the page has a control for by that control's label, any other by the flag
    ``batchphone ui`` or the CLI takes (``--delimiter``), as the command line shows it."""
    named = _CONTROL_NAMED.sub(
        lambda match: f"the {_PAGE_CONTROLS[match.group(1)]} setting", message
    )
    return flagged(named)
