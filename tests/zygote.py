"""Real ``batchphone`` processes without a new interpreter's start-up each.

A test that kills a run with kill -9, or sends it SIGINT or SIGTERM, needs a real process: its
own pid, its own signals, its files left as the kernel leaves them. It does not need a new
interpreter importing the package each time (~0.45 s of CPU, most of a killed run's cost). So
one process (the zygote, as Android starts its apps) imports the CLI once and forks a child for
each command; the child takes the test's environment, folder and output files, runs
``batchphone.cli.main`` as ``python -m batchphone`` does, and ends as an interpreter ends
(``sys.exit``: non-daemon threads joined, atexit handlers run, streams flushed).

The zygote is single-threaded when it forks: it loads no polars (a CSV run does not import it;
polars' threads do not survive a fork, so a child that reads XLSX or Parquet imports it after),
and it forks before any run has started a thread pool or an event loop.

``python -m tests.zygote`` serves: one JSON request a line on stdin, ``pid N`` back on stdout,
then ``exit N CODE CPU`` when that child ends (CODE as ``subprocess``: -9 for SIGKILL; CPU its
user + system seconds). The test's side is ``Forked``, used as a ``subprocess.Popen``; the zygote
starts at the first one and ends with the test process, which reaps it (so the children's CPU
is counted in the test process's).

Programs: ``batchphone`` (the CLI) and ``budget_worker`` (tests/budget_worker.py).
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: What a run imports: loaded once in the zygote, shared by every child.
PRELOAD = (
    "anyio._backends._asyncio",
    "anyio._core._signals",
    "batchphone.api",
    "batchphone.cli",
    "batchphone.emulator.app",
    "batchphone.emulator.statefile",
    "batchphone.emulator.transport",
    "batchphone.modes.rehearsal",
    "batchphone.modes.runner",
    "batchphone.remote.client",
    "batchphone.render",
    "certifi",
    "httpx",
    "phonenumbers.data.region_US",
    "structlog",
    "tests.budget_worker",
    "tqdm",
    "uvicorn",
)


# -- the zygote's side ---------------------------------------------------------------------------


def _child(request: dict[str, Any], inherited: list[int]) -> None:
    """In the forked child: become the process the request describes (then return to run it)."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    for fd in inherited:  # the zygote's pidfds: not the run's
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = list(request["argv"])


def _serve() -> dict[str, Any] | None:
    """Fork a child per request until stdin closes; the child returns its request."""
    children: dict[int, int] = {}  # pidfd -> pid
    pending = b""
    while True:
        ready, _, _ = select.select([0, *children], [], [])
        for fd in ready:
            if fd != 0:
                pid = children.pop(fd)
                os.close(fd)
                _, status, usage = os.wait4(pid, 0)
                cpu = usage.ru_utime + usage.ru_stime
                _say(f"exit {pid} {os.waitstatus_to_exitcode(status)} {cpu:.3f}")
                continue
            chunk = os.read(0, 65536)
            if not chunk:
                return None
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    _child(request, list(children))
                    return dict(request)
                children[os.pidfd_open(pid)] = pid
                _say(f"pid {pid}")


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _main() -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    assert threading.active_count() == 1, threading.enumerate()  # nothing to lose at a fork
    assert "polars" not in sys.modules, "polars' threads would not survive the fork"
    gc.freeze()  # what every child shares: its collections need not walk (and copy) it
    request = _serve()
    if request is None:
        return
    program = request["program"]
    if program == "batchphone":
        from batchphone.cli import main

        main(request["argv"][1:], prog_name="batchphone")
    else:
        from tests import budget_worker

        budget_worker.main(request["argv"][1:])


# -- the test's side -----------------------------------------------------------------------------


class Zygote:
    """The zygote process and a thread reading its answers."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.zygote"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.folder = Path(tempfile.mkdtemp(prefix="zygote-"))  # the children's out and err
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pids: list[int] = []
        self._codes: dict[int, int] = {}
        self.cpu: dict[int, float] = {}  # each ended child's CPU seconds (to measure)
        threading.Thread(target=self._read, name="zygote-answers", daemon=True).start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for raw in self._process.stdout:
            kind, pid, *code = raw.decode().split()
            with self._changed:
                if kind == "pid":
                    self._pids.append(int(pid))
                else:
                    self._codes[int(pid)] = int(code[0])
                    self.cpu[int(pid)] = float(code[1])
                self._changed.notify_all()

    def fork(self, request: dict[str, Any]) -> int:
        """Start a child for ``request``; its pid."""
        assert self._process.stdin is not None
        with self._changed:
            self._process.stdin.write(json.dumps(request).encode() + b"\n")
            self._process.stdin.flush()
            assert self._changed.wait_for(lambda: self._pids, timeout=30), "no fork"
            return self._pids.pop(0)

    def code(self, pid: int, timeout: float | None) -> int | None:
        """The exit code of child ``pid``, waiting up to ``timeout`` s (None: not ended)."""
        with self._changed:
            self._changed.wait_for(lambda: pid in self._codes, timeout=timeout)
            return self._codes.get(pid)

    def close(self) -> None:
        """End the zygote (its children go on) and reap it: their CPU is counted as ours."""
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait(30)
        shutil.rmtree(self.folder, ignore_errors=True)


_shared: Zygote | None = None
_shared_lock = threading.Lock()


def zygote() -> Zygote:
    """This test process's zygote, started at its first use and ended at its exit."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Zygote()
            atexit.register(stop)
        return _shared


def stop() -> None:
    """End this test process's zygote, if one was started."""
    global _shared
    with _shared_lock:
        if _shared is not None:
            _shared.close()
            _shared = None


class Forked:
    """A child of the zygote, used as a ``subprocess.Popen`` is: text out and err, pid,
    signals, ``poll``, ``wait``, ``communicate`` and ``returncode`` (negative for a signal)."""

    def __init__(
        self,
        program: str,
        args: list[str],
        env: dict[str, str],
        cwd: Path,
        *,
        stderr: Path | None = None,
    ) -> None:
        self._zygote = zygote()
        stamp = time.monotonic_ns()
        self._out = self._zygote.folder / f"{stamp}.out"
        self._err = stderr or self._zygote.folder / f"{stamp}.err"
        self._own = [self._out] if stderr else [self._out, self._err]
        for path in (self._out, self._err):  # there to read before the child writes
            path.touch(0o600)
        argv = [program, *args]
        request = {"program": program, "argv": argv, "env": env, "cwd": str(cwd)}
        request |= {"stdout": str(self._out), "stderr": str(self._err)}
        self.args = argv
        self.pid = self._zygote.fork(request)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._zygote.code(self.pid, timeout=0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self._zygote.code(self.pid, timeout=timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def output(self) -> str:
        """What the child wrote on stdout so far."""
        return self._out.read_text(encoding="utf-8", errors="replace")

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Wait for the end; its stdout and stderr (the files are removed, but a ``stderr``
        file the caller named)."""
        self.wait(timeout)
        out, err = self.output(), self._err.read_text(encoding="utf-8", errors="replace")
        for path in self._own:
            path.unlink(missing_ok=True)
        return out, err


if __name__ == "__main__":
    _main()
