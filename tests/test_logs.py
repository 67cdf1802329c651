"""logs.get_logger: quiet unless the caller set up logging; structlog's configuration wins."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog

from batchphone.logs import LOGGER_NAME, get_logger


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """As a fresh process: structlog not configured (an earlier test may have done it)."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def test_unconfigured_an_event_prints_nothing(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not structlog's stdout default, and not logging's last resort (stderr, warnings up):
    pytest's own handlers are taken off the root logger, as in a plain script."""
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    log = get_logger()
    log.info("row_done", row=3, status="updated")
    log.warning("row_failed", row=4)
    log.error("circuit_open", failed=5)
    assert capfd.readouterr() == ("", "")


def test_unconfigured_events_reach_a_stdlib_handler_as_key_value_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = get_logger()
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        log.info("row_done", status="updated", row=3)
        log.debug("too_fine", row=3)  # below the handler's level: dropped
    (record,) = caplog.records
    assert record.name == LOGGER_NAME and record.levelno == logging.INFO
    assert record.getMessage() == "event='row_done' row=3 status='updated'"


def test_once_structlog_is_configured_events_go_its_way(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = get_logger()  # taken before the configuration, as a module-level ``log`` is
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)
    seen: list[dict[str, object]] = []

    def keep(_logger: object, method: str, event: dict[str, object]) -> str:
        seen.append({**event, "method": method})
        raise structlog.DropEvent

    structlog.configure(processors=[keep])
    log.warning("rate_limited", retry_after=2.0)
    assert seen == [{"event": "rate_limited", "retry_after": 2.0, "method": "warning"}]
    assert caplog.records == []  # not also through the stdlib path
    structlog.reset_defaults()
    log.warning("rate_limited", retry_after=3.0)
    assert len(seen) == 1 and len(caplog.records) == 1  # unconfigured again: stdlib
