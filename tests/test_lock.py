"""The run lock: exclusive, names its holder, taken over from a dead one, asked about without
being taken."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from batchphone.files import lock as lock_module
from batchphone.files.lock import RunLock, lock_holder, lock_path

HOLDER = f"pid {os.getpid()} on {socket.gethostname()}"


# Run in a child process: sets the lock, or tries to and prints what happened.
_LOCKER = """
import sys, time
from pathlib import Path
from batchphone.errors import OutputError
from batchphone.files.lock import RunLock
assert ("fcntl" in sys.modules and sys.modules["fcntl"] is None) == (sys.argv[2] == "nofcntl")
lock = RunLock(Path(sys.argv[1]))
try:
    lock.acquire()
except OutputError as exc:
    print("refused:", exc, flush=True)
    sys.exit(0)
print("locked", flush=True)
if sys.argv[3] == "hold":
    time.sleep(60)
lock.release()
print("released", flush=True)
"""


def no_fcntl_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a Python where ``import fcntl`` fails (as on Windows)."""
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['fcntl'] = None\n")
    path = os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


@pytest.mark.parametrize("platform", ["fcntl", "nofcntl"])
def test_lock_is_exclusive_names_its_holder_and_a_dead_ones_is_taken_over(
    tmp_path: Path, platform: str
) -> None:
    out = tmp_path / "results.csv"
    env = no_fcntl_env(tmp_path) if platform == "nofcntl" else dict(os.environ)

    def locker(mode: str) -> subprocess.Popen[str]:
        argv = [sys.executable, "-c", _LOCKER, str(out), platform, mode]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)

    holder = locker("hold")
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        inode = os.stat(lock_path(out)).st_ino
        contender, _ = locker("release").communicate(timeout=60)
        assert contender.startswith("refused: results.csv is being written by another")
        assert f"pid {holder.pid}" in contender  # a live holder is named
    finally:
        holder.kill()  # like kill -9: the kernel (or the soft lock's pid check) frees it
        holder.wait()
    taker, _ = locker("release").communicate(timeout=60)
    assert taker.split() == ["locked", "released"]  # the dead holder's lock is taken over
    # the lock file is never unlinked: a waiter and a newcomer always lock the same file
    assert os.stat(lock_path(out)).st_ino == inode
    assert stat.S_IMODE(os.stat(lock_path(out)).st_mode) == 0o600


@pytest.mark.parametrize("proc_locks", [True, False])
def test_the_lock_holder_is_named_without_taking_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proc_locks: bool
) -> None:
    out = tmp_path / "results.csv"
    assert lock_holder(tmp_path / "results.csv.lock") == (False, None)  # no lock file yet
    if not proc_locks:  # a system without /proc/locks: a non-blocking try, released at once
        monkeypatch.setattr(lock_module, "PROC_LOCKS", tmp_path / "no-proc-locks")
    lock = RunLock(out)
    lock.acquire()
    try:
        assert lock_holder(lock.path) == (True, HOLDER)
        assert lock_holder(lock.path) == (True, HOLDER)  # asking twice takes nothing
    finally:
        lock.release()
    # the text stays in the file after the run: only the OS lock says whether it is live
    assert HOLDER in lock.path.read_text()
    assert lock_holder(lock.path) == (False, None)
    again = RunLock(out)
    again.acquire()  # status left nothing behind that keeps a run from starting
    again.release()


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="Linux: /proc/locks")
def test_a_free_lock_is_not_even_tried_on_linux(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run starting at that instant must not find its lock busy because of a status."""
    lock = RunLock(tmp_path / "results.csv")
    lock.acquire()
    lock.release()  # the file is there, nobody holds it

    def tried(fd: int) -> bool:
        raise AssertionError("a lock nobody holds was tried")

    monkeypatch.setattr(lock_module, "_held_by_trying", tried)
    assert lock_holder(lock.path) == (False, None)
