"""atomic.write_private: mode 0600 whatever the umask, written whole or not at all."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchphone.files.atomic import replacing, write_private

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")


@pytest.fixture
def umask() -> Iterator[None]:
    """Tests set the process umask; put it back afterwards."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@posix_only
@pytest.mark.parametrize("mask", [0o000, 0o022, 0o277])
def test_the_file_is_mode_0600_whatever_the_umask(tmp_path: Path, umask: None, mask: int) -> None:
    os.umask(mask)
    path = tmp_path / "summary.json"
    write_private(path, b"{}")
    assert _mode(path) == 0o600
    path.chmod(0o644)  # an existing, more open file is replaced, not reused
    write_private(path, b"{}")
    assert _mode(path) == 0o600


def test_an_existing_file_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_private(path, b"x" * 10_000)
    write_private(path, b"short")
    assert path.read_bytes() == b"short"
    assert os.listdir(tmp_path) == ["state.json"]


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    path = tmp_path / "state.json"
    write_private(path, b"old")

    def boom(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, boom)
    with pytest.raises(OSError, match="No space"):
        write_private(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["state.json"]


def test_a_ctrl_c_mid_write_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_private(path, b"new")
    assert os.listdir(tmp_path) == []


def test_a_temp_file_left_by_a_crashed_writer_of_this_pid_is_cleaned(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    leftover = tmp_path / f".state.json.{os.getpid()}.tmp"
    leftover.write_bytes(b"half of an old wri")
    write_private(path, b"new")
    assert path.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["state.json"]


def test_an_error_inside_the_block_keeps_the_old_file(tmp_path: Path) -> None:
    """``replacing``, as the result writer uses it: a writer that fails half way (a stop, a
    bad row) leaves the old file whole and no temp file."""
    path = tmp_path / "results.csv"
    write_private(path, b"old")
    with pytest.raises(KeyboardInterrupt), replacing(path) as (temp, file):
        file.write(b"half of the new")
        assert temp.parent == tmp_path and temp.exists()
        raise KeyboardInterrupt
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["results.csv"]
