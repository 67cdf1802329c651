"""Measuring a command as users run it, and serving the emulator from its own process.

Every tool runs in a subprocess: its wall time is from the launch to the exit, its CPU time and
peak RSS come from ``os.wait4`` on that one child (not ``RUSAGE_CHILDREN``, which would also
count the emulator and keep the largest RSS of any child ever reaped). The emulator is another
process, so on two cores the client's CPU is measured alone. Both processes read the same
system-wide ``CLOCK_MONOTONIC``, so the emulator's request log can be set against a launch time.
"""

from __future__ import annotations

import fcntl
import os
import pty
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

__all__ = [
    "PROJECT_ID",
    "ApiLog",
    "EmulatorProcess",
    "Measured",
    "measure",
    "sustained_rate",
]

#: The emulated project: short, so the SDKs do not derive a regional URL from it.
PROJECT_ID = "P2benchproject000000000000000"
UPDATE_PATH = "/v1/mgmt/user/update/phone"
_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Measured:
    """One finished subprocess: wall and CPU seconds, peak RSS, exit code, output tails."""

    argv: tuple[str, ...]
    started: float  # time.monotonic() at launch
    wall_s: float
    cpu_s: float
    max_rss_mb: float
    returncode: int
    stdout: str
    stderr: str

    @property
    def command(self) -> str:
        """The command line as a reader would type it (interpreter path shortened)."""
        return " ".join(["python", *self.argv[1:]])


def measure(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = 900.0,
    tty: bool = False,
) -> Measured:
    """Run ``argv`` to completion and measure it; kill it after ``timeout_s``.

    ``tty=True`` gives the child a terminal for stderr, as when a user runs it by hand, so a
    progress bar is drawn (and paid for) as it would be.
    """
    # files, not pipes: a chatty child must never block on a full pipe while we wait for it
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        terminal = _Terminal() if tty else None
        started = time.monotonic()
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=terminal.child_fd if terminal is not None else err,
            env=env,
            cwd=cwd,
        )
        if terminal is not None:
            terminal.start()
        killer = threading.Timer(timeout_s, proc.kill)
        killer.start()
        try:
            # wait4 reaps this child alone and returns its own resource usage
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = terminal.finish() if terminal is not None else err.read().decode(errors="replace")
    return Measured(
        argv=tuple(argv),
        started=started,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        # Linux reports ru_maxrss in KiB
        max_rss_mb=usage.ru_maxrss / 1024,
        returncode=proc.returncode,
        stdout=stdout[-4000:],
        stderr=stderr[-4000:],
    )


class _Terminal:
    """A pseudo-terminal of 40x120 for a child's stderr, drained by a thread."""

    def __init__(self) -> None:
        self._parent_fd, self.child_fd = pty.openpty()
        fcntl.ioctl(self.child_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self._chunks: list[bytes] = []
        self._thread = threading.Thread(target=self._drain, daemon=True)

    def start(self) -> None:
        # the child holds its own copy now; ours must go, or the drain never sees the end
        os.close(self.child_fd)
        self._thread.start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self._parent_fd, 65536)
            except OSError:  # EIO: the child closed its side
                return
            if not chunk:
                return
            self._chunks.append(chunk)
            del self._chunks[:-64]

    def finish(self) -> str:
        self._thread.join(timeout=5)
        os.close(self._parent_fd)
        return b"".join(self._chunks).decode(errors="replace")


def sustained_rate(times: Sequence[float]) -> float | None:
    """Calls per second as the least-squares slope of call number against time.

    A limiter that sends each window's share in a burst draws a staircase; one that spaces its
    calls draws a line. ``(n-1)/(last-first)`` overrates the first by a whole window on a short
    run; the slope gives both the rate they keep up, edges and all.
    """
    if len(times) < 3 or times[-1] - times[0] <= 0:
        return None
    slope, _ = statistics.linear_regression(list(times), list(range(len(times))))
    return slope


@dataclass(frozen=True, slots=True)
class ApiLog:
    """What the emulator saw of one measured run."""

    updates_ok: tuple[float, ...]  # answer times of update calls answered 200
    updates_all: tuple[float, ...]  # times of every update call, whatever its answer
    rate_limited: int
    blocks: int
    max_window_calls: int
    calls: int
    statuses: dict[int, int] = field(default_factory=dict)
    #: users the emulator applied a write to, by any call (a batch patch writes up to 100)
    users_updated: int = 0
    #: calls by path, whatever their answer
    paths: dict[str, int] = field(default_factory=dict)

    @property
    def api_span_s(self) -> float:
        """Seconds from the first to the last successful update."""
        if len(self.updates_ok) < 2:
            return 0.0
        return self.updates_ok[-1] - self.updates_ok[0]

    def tightest(self, calls: int) -> float | None:
        """The shortest time in which the server saw ``calls + 1`` update calls.

        Under ``calls`` per window W, a value below W is the overrun that cost a block.
        """
        times = self.updates_all
        if len(times) <= calls:
            return None
        return min(times[i] - times[i - calls] for i in range(calls, len(times)))

    @property
    def sustained(self) -> float | None:
        """Successful updates per second while the run was calling the API."""
        return sustained_rate(self.updates_ok)


class EmulatorProcess:
    """``python -m batchphone.emulator`` on a free loopback port, until the block exits.

    ``with EmulatorProcess(key, users=1000, rate="50/1", penalty=1) as emu:`` then
    ``emu.base_url``, ``emu.env()`` for the clients, and ``emu.api_log()`` afterwards.
    """

    def __init__(
        self,
        key: str,
        *,
        users: int,
        rate: str = "1000000000/1",
        penalty: float = 1.0,
        latency: float = 0.0,
        arrival_jitter: float = 0.0,
        seed: int = 0,
    ) -> None:
        self._key = key
        self._args = [
            sys.executable,
            "-m",
            "batchphone.emulator",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--quiet",
            "--project-id",
            PROJECT_ID,
            "--generate",
            str(users),
            "--rate-limit",
            rate,
            "--penalty",
            str(penalty),
            "--latency",
            str(latency),
            "--arrival-jitter",
            str(arrival_jitter),
            "--seed",
            str(seed),
        ]
        self._proc: subprocess.Popen[str] | None = None
        self._state_dir: str | None = None
        self.base_url = ""

    def __repr__(self) -> str:
        return f"EmulatorProcess(base_url={self.base_url!r})"

    def __enter__(self) -> EmulatorProcess:
        # the key travels by environment, never argv: argv shows in ps
        env = {**os.environ, "BATCHPHONE_EMULATOR_KEY": self._key, "PYTHONUNBUFFERED": "1"}
        self._proc = subprocess.Popen(
            self._args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
        )
        assert self._proc.stdout is not None
        timer = threading.Timer(_START_TIMEOUT_S, self._proc.kill)
        timer.start()
        try:
            line = self._proc.stdout.readline()
        finally:
            timer.cancel()
        if " listening on " not in line:
            self.__exit__(None, None, None)
            raise RuntimeError(f"the emulator did not start: {line.strip()!r}")
        self.base_url = line.split(" listening on ", 1)[1].split()[0]
        if not self.base_url.startswith(("http://127.0.0.1:", "http://[::1]:")):
            self.__exit__(None, None, None)
            raise RuntimeError(f"the emulator is not on loopback: {self.base_url}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        state, self._state_dir = self._state_dir, None
        if state is not None:  # the clients' budget log: gone with the emulator it measured
            shutil.rmtree(state, ignore_errors=True)
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # Ctrl-C is how the emulator is meant to stop
            try:
                proc.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def cpu_s(self) -> float:
        """CPU seconds the emulator process has used so far (from /proc)."""
        if self._proc is None:
            return 0.0
        fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # utime and stime are fields 14 and 15 of stat(5), counted after the ")" from 3
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def env(self) -> dict[str, str]:
        """The environment a client of this emulator runs with (the SDKs' own variables)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DESCOPE_", "BATCHPHONE_"))}
        if self._state_dir is None:
            # a budget log of its own: no run of another measurement (or of the user) shares it
            self._state_dir = tempfile.mkdtemp(prefix="batchphone-bench-state-")
        env.update(
            BATCHPHONE_STATE_DIR=self._state_dir,
            DESCOPE_PROJECT_ID=PROJECT_ID,
            DESCOPE_MANAGEMENT_KEY=self._key,
            DESCOPE_BASE_URI=self.base_url,
        )
        return env

    def stats(self) -> dict[str, Any]:
        """The project's ``/_emulator/stats`` document, request log included."""
        response = httpx.get(f"{self.base_url}/_emulator/stats", timeout=30.0)
        response.raise_for_status()
        document: dict[str, Any] = response.json()["projects"][PROJECT_ID]
        return document

    def api_log(self) -> ApiLog:
        """The successful update times, rate-limit counters and call counts of this run."""
        doc = self.stats()
        updates = [e for e in doc["log"] if e["path"] == UPDATE_PATH]
        ok = sorted(e["t"] for e in updates if e["status"] == 200)
        statuses: dict[int, int] = {}
        paths: dict[str, int] = {}
        for entry in doc["requests"]:
            paths[entry["path"]] = paths.get(entry["path"], 0) + entry["count"]
            if entry["path"] == UPDATE_PATH:
                statuses[entry["status"]] = statuses.get(entry["status"], 0) + entry["count"]
        return ApiLog(
            updates_ok=tuple(ok),
            updates_all=tuple(sorted(e["t"] for e in updates)),
            rate_limited=doc["rateLimited"],
            blocks=doc["blocks"],
            max_window_calls=doc["maxWindowCalls"],
            calls=doc["calls"],
            statuses=statuses,
            users_updated=len(doc["updates"]),
            paths=paths,
        )
