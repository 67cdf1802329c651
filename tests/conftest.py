"""Shared fixtures: both anyio backends, the sample files, and a state dir per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchphone.budget import STATE_DIR_ENV

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


@pytest.fixture(autouse=True)
def state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own state dir: no shared budget file between tests or with real runs.

    Nothing a test runs (in-process or a subprocess, which inherits the environment) writes
    into the user's ~/.local/state.
    """
    path = tmp_path_factory.mktemp("state")
    monkeypatch.setenv(STATE_DIR_ENV, str(path))
    return path


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs under asyncio and trio."""
    return str(request.param)


@pytest.fixture
def samples() -> Path:
    """The samples/ folder of the repository."""
    return SAMPLES


@pytest.fixture(autouse=True)
def _console_logs_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests are not on a terminal, where ``auto`` means JSON: CLI tests read the text form
    unless they choose ``--log-format json`` (or delete this variable to test ``auto``)."""
    monkeypatch.setenv("BATCHPHONE_LOG_FORMAT", "console")
