"""Shared fixtures: both anyio backends, and the sample files."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


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
