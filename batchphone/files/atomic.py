"""One small file written whole or not at all, readable by its owner only.

For the small documents batchphone keeps beside a run (``--summary-json``, the emulator's
state file): a temp file in the same folder, fsync, ``os.replace``, then fsync of the folder,
so a crash or a Ctrl-C leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["write_atomic", "write_private"]


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically, mode 0600 (where modes apply)."""
    write_atomic(path, data, mode=0o600)


def write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    """Replace ``path`` with ``data`` atomically, with exactly ``mode`` (where modes apply).

    Only for files that hold no personal data may ``mode`` be wider than 0600.
    """
    temp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()  # left by a crashed writer of this same process id
    fd = os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        if hasattr(os, "fchmod"):  # exactly this mode whatever the umask (POSIX only)
            os.fchmod(fd, mode)
        with open(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    with contextlib.suppress(OSError, AttributeError):  # make the rename itself durable
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
