"""A file written whole or not at all, readable by its owner only.

For every file batchphone writes over (the result file, ``--summary-json``, the emulator's
state file, the metrics file): a temp file in the same folder, created with its final mode,
fsync, ``os.replace``, then fsync of the folder, so a crash or a Ctrl-C leaves either the old
file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["replacing", "write_atomic", "write_private"]

_FLAGS = os.O_CREAT | os.O_EXCL | os.O_WRONLY
_FLAGS |= getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically, mode 0600 (where modes apply)."""
    write_atomic(path, data, mode=0o600)


def write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    """Replace ``path`` with ``data`` atomically, with exactly ``mode`` (where modes apply).

    Only for files that hold no personal data may ``mode`` be wider than 0600.
    """
    with replacing(path, mode=mode) as (_, file):
        file.write(data)


@contextlib.contextmanager
def replacing(path: Path, *, mode: int = 0o600) -> Iterator[tuple[Path, IO[bytes]]]:
    """Yield a temp file beside ``path`` (its path, and it open for writing bytes) that takes
    ``path``'s place when the block ends: flushed, fsynced, renamed over it, the rename made
    durable. An error in the block removes it and leaves ``path`` as it was.

    The temp file has exactly ``mode`` whatever the umask (where modes apply); it is 0600 from
    the moment it exists, so personal data is never readable by others on the way.
    """
    temp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()  # left by a crashed writer of this same process id
    fd = os.open(temp, _FLAGS, 0o600)
    try:
        if hasattr(os, "fchmod"):  # not on Windows, where the mode bits mean little
            os.fchmod(fd, mode)
        with open(fd, "wb") as file:
            yield temp, file
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
