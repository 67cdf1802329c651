"""The page's task processes, forked from one that imported the API once.

A task is a process of its own: Stop is its SIGINT, as Ctrl-C stops the CLI, and a run holds its
lock like any other process. A new interpreter spends ~0.4 s of CPU importing the package before
its first call, at every click on the page. The standard library's forkserver keeps one clean,
single-threaded process that imported the worker's modules once and forks a child per task: a
real process (its own pid, signals and exit code), without the imports. Where there is no
forkserver (Windows), ``spawn`` starts a new interpreter, as before.

The child takes the server's environment and folder at the time of the click (the forkserver
keeps those of its own start), appends its stderr to the task's log, and sends the worker's
JSON lines back over a pipe.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # no ForkServerContext on Windows
    from multiprocessing.context import ForkServerContext, SpawnContext

__all__ = ["Worker", "warm"]

#: What a task imports: loaded once in the forkserver.
_PRELOAD = ["batchphone.ui.worker", "batchphone.api", "batchphone.modes.runner"]

_context_lock = threading.Lock()


def _context() -> ForkServerContext | SpawnContext:
    with _context_lock:
        if "forkserver" not in multiprocessing.get_all_start_methods():
            return multiprocessing.get_context("spawn")
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)
        return context


def warm() -> None:
    """Start the forkserver now (it imports the worker's modules on its own, in the background):
    the first task's start would otherwise wait for those imports, on the server's event loop."""
    if _context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


class Worker:
    """One task's process, used as a ``subprocess.Popen`` is: ``pid``, ``poll``, ``wait``,
    ``send_signal``, ``kill``; ``lines()`` yields what it writes until it ends."""

    def __init__(self, spec: dict[str, Any], log_path: Path) -> None:
        context = _context()
        self._reader, writer = context.Pipe(duplex=False)
        where = {"env": dict(os.environ), "cwd": os.getcwd(), "log": str(log_path)}
        self._process = context.Process(
            target=_task, args=(spec, writer, where), name="batchphone-task"
        )
        self._process.start()
        writer.close()  # the child holds the only writing end: its end is our end of file
        self.pid: int = self._process.pid or 0

    def lines(self) -> Iterator[str]:
        """The worker's lines, until the process has closed its end."""
        while True:
            try:
                chunk = self._reader.recv_bytes()
            except (EOFError, OSError):
                self._reader.close()
                return
            yield from chunk.decode("utf-8", errors="replace").splitlines()

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        """The exit code (negative: the signal that ended it); ``TimeoutError`` if still
        running after ``timeout`` seconds."""
        self._process.join(timeout)
        code = self._process.exitcode
        if code is None:
            raise TimeoutError(f"task process {self.pid} still running")
        return code

    def send_signal(self, signum: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self._process.kill()


class _Lines:
    """The worker's ``out``: each line written is sent whole over the pipe."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def write(self, text: str) -> int:
        self._connection.send_bytes(text.encode("utf-8"))
        return len(text)

    def flush(self) -> None:
        """Each write is sent at once."""


def _task(spec: dict[str, Any], writer: Connection, where: dict[str, Any]) -> None:
    """In the child: become the process the page started, run the spec, exit with its code."""
    os.environ.clear()
    os.environ.update(where["env"])
    os.chdir(where["cwd"])
    log = os.open(where["log"], os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
    os.dup2(log, 2)
    os.close(log)
    from batchphone.ui import worker

    code = worker.run(spec, _Lines(writer))
    writer.close()
    sys.exit(code)
