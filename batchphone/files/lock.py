"""The run lock: one run at a time writes a result file and its journal.

``<out>.lock`` beside the result file is locked by the run writing it (``RunLock``); anyone may
ask who holds it without taking it (``lock_holder``: ``status``, undo of a journal).
"""

from __future__ import annotations

import errno
import os
import socket
import warnings
from pathlib import Path
from typing import Any

from batchphone.errors import OutputError
from batchphone.files.journal import open_nofollow, refuse_link

__all__ = ["RunLock", "lock_holder", "lock_path"]

#: Linux lists every file lock here, with the inode it is on: no need to touch the lock at all.
PROC_LOCKS = Path("/proc/locks")


def lock_path(out_path: Path) -> Path:
    """Where the lock of a result file lives."""
    return out_path.with_name(out_path.name + ".lock")


class RunLock:
    """An exclusive lock on a result file, so two runs never write the same journal.

    The OS lock is taken on a descriptor of ``<out>.lock`` that we open ourselves (without
    following a link) through ``filelock.lock_descriptor``: ``flock`` on POSIX, ``LockFileEx``
    on byte 0 on Windows. The kernel drops it when its process dies, so a lock left by a
    ``kill -9`` is stale by construction and is simply taken over. The file is never unlinked:
    unlinking a lock file lets a waiter lock the old inode while a third run creates a new one.
    The holder writes ``pid N on HOST`` after byte 0 (readable while Windows locks byte 0).
    Where the OS has no such lock (no ``fcntl``), filelock's soft lock on ``<out>.lock.soft``
    stands in: it names its holder and takes over from a dead one the same way.
    """

    def __init__(self, out_path: Path) -> None:
        self.path = lock_path(out_path)
        self._fd = -1
        self._soft: Any = None

    def acquire(self) -> None:
        """Take the lock or raise ``OutputError`` naming the process holding it."""
        with warnings.catch_warnings():  # "only soft file lock is available": handled below
            warnings.simplefilter("ignore")
            import filelock

        fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT)
        try:
            locked = filelock.lock_descriptor(fd, blocking=False)
        except OSError as exc:
            os.close(fd)
            if exc.errno != errno.ENOSYS:
                raise OutputError(f"cannot lock {self.path}: {exc.strerror}") from None
            self._acquire_soft(filelock)
            return
        if not locked:
            os.lseek(fd, 1, os.SEEK_SET)
            holder = os.read(fd, 512).decode("utf-8", "replace").strip()
            os.close(fd)
            self._busy(holder)
        os.ftruncate(fd, 0)
        os.write(fd, f"\npid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd

    def _acquire_soft(self, filelock: Any) -> None:
        soft_path = self.path.with_name(self.path.name + ".soft")
        refuse_link(soft_path)
        soft = filelock.SoftFileLock(str(soft_path), timeout=0)
        try:
            soft.acquire()
        except filelock.Timeout:
            pid = soft.pid
            self._busy(f"pid {pid}" if pid else "")
        self._soft = soft

    def _busy(self, holder: str) -> None:
        raise OutputError(
            f"{self.path.name[: -len('.lock')]} is being written by another batchphone run "
            f"({holder or 'another process'}); wait for it or stop it first"
        )

    def release(self) -> None:
        """Release the lock; its file stays."""
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = -1
        if self._soft is not None:
            self._soft.release()
            self._soft = None


def lock_holder(path: Path) -> tuple[bool, str | None]:
    """Whether a process holds the run lock at ``path``, and who (``pid N on HOST``).

    A non-blocking try on a read-only descriptor, released at once: it takes nothing from a
    lock that is held. On Linux it is made only when ``/proc/locks`` lists a lock on that inode,
    so a lock that nobody holds is never touched (a run starting at that instant would find it
    busy). The inode alone: some file systems (btrfs) show another device number there.
    """
    try:
        fd = open_nofollow(path, os.O_RDONLY)
    except FileNotFoundError:
        return False, None
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            return False, None
        raise
    try:
        held = _listed_in_proc_locks(fd) is not False and _held_by_trying(fd)
        if not held:
            return False, None
        os.lseek(fd, 1, os.SEEK_SET)  # the holder writes after byte 0 (Windows locks byte 0)
        text = os.read(fd, 512).decode("utf-8", "replace").strip()
        return True, text or None
    finally:
        os.close(fd)


def _listed_in_proc_locks(fd: int) -> bool | None:
    """Whether ``/proc/locks`` lists a lock on the file's inode; ``None`` where there is no
    such file (not Linux)."""
    try:
        table = PROC_LOCKS.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    inode = str(os.fstat(fd).st_ino)
    # "1: FLOCK  ADVISORY  WRITE 4242 08:01:131077 0 EOF": device major:minor (hex), inode
    for line in table.splitlines():
        for word in line.split():
            parts = word.split(":")
            if len(parts) == 3 and parts[2] == inode:
                return True
    return False


def _held_by_trying(fd: int) -> bool:
    with warnings.catch_warnings():  # "only soft file lock is available": no lock to test
        warnings.simplefilter("ignore")
        import filelock

    try:
        taken = filelock.lock_descriptor(fd, blocking=False)
    except OSError:
        return False
    return not taken  # taken: released when the descriptor closes, a moment later
