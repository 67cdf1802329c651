"""Shared fixtures: the anyio backends, the sample files, and a state dir per test."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.virtual import VirtualClock, install, virtual_backend

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


@pytest.fixture(autouse=True)
def state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own state dir: no shared budget file between tests or with real runs.

    Nothing a test runs (in-process or a subprocess, which inherits the environment) writes
    into the user's ~/.local/state: a library call's default (platformdirs: the user's state
    folder, under ``XDG_STATE_HOME``) and the CLI's ``BATCHPHONE_STATE_DIR`` are one temporary
    folder.
    """
    home = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("XDG_STATE_HOME", str(home))
    path = home / "batchphone"
    monkeypatch.setenv("BATCHPHONE_STATE_DIR", str(path))
    return path


#: The stage whose modules are anyio code for any loop: the pool, the limiter, retries, stops,
#: lanes, batches. Their tests (``tests/test_<module>.py``) run under asyncio and trio.
REMOTE = ROOT / "batchphone" / "remote"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The backends of an async test: asyncio and trio for a test of a ``remote/`` module;
    asyncio alone for the others (whole runs, undo, the report, the emulator), which is the loop
    ``batchphone.run`` and every other public call start (modes/runner.py), so a trio run of
    them checks a path no caller can take."""
    if "anyio_backend" not in metafunc.fixturenames:
        return
    module = Path(str(metafunc.definition.path)).stem.removeprefix("test_")
    backends = ["asyncio", "trio"] if (REMOTE / f"{module}.py").exists() else ["asyncio"]
    metafunc.parametrize("anyio_backend", backends, indirect=True)


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> str | tuple[str, dict[str, Any]]:
    """The backend ``pytest_generate_tests`` chose; on virtual time if marked ``virtual_time``
    (see tests/virtual.py)."""
    name = str(request.param)
    if request.node.get_closest_marker("virtual_time") is None:
        return name
    clock: VirtualClock = request.getfixturevalue("virtual_clock")
    install(request.getfixturevalue("monkeypatch"), clock)
    return virtual_backend(name, clock)


@pytest.fixture
def virtual_clock() -> VirtualClock:
    """The clock of a ``virtual_time`` test's loop, readable outside it (an emulator's clock)."""
    return VirtualClock()


@pytest.fixture
def samples() -> Path:
    """The samples/ folder of the repository."""
    return SAMPLES


@pytest.fixture(autouse=True)
def _console_logs_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests are not on a terminal, where ``auto`` means JSON: CLI tests read the text form
    unless they choose ``--log-format json`` (or delete this variable to test ``auto``)."""
    monkeypatch.setenv("BATCHPHONE_LOG_FORMAT", "console")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a real full disk, where the machine lets the tests mount one (root)."""
    where = tmp_path / "small"
    where.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("this machine does not let the tests mount a tmpfs")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The browser test (the longest, 20-30 s) first, then the other ``slow`` ones, which wait
    on real time (kill -9, signals, windows): xdist hands them out one by one to all workers at
    the start (``--dist load``), so their waits overlap the CPU-bound rest instead of ending the
    run (sorted is stable: the rest keep their order)."""
    items.sort(
        key=lambda item: (
            not item.get_closest_marker("browser"),
            not item.get_closest_marker("slow"),
        )
    )
