"""The library's logger: quiet unless the caller set up logging.

Every module logs through ``log = get_logger()``. Each call picks its way out:

- structlog configured (the CLI does it in ``render.configure_logging``, a caller may do it
  too): the event goes through that configuration, as ``structlog.get_logger()`` would.
- otherwise: to the stdlib logger ``batchphone``, which has a ``NullHandler`` as the logging
  HOWTO asks of libraries. Nothing is printed unless the caller configured stdlib logging
  (``logging.basicConfig``, Airflow's task log): then the events reach its handlers.

Why not plain ``structlog.get_logger()``: unconfigured, structlog prints every event to
stdout, which a library must never do (a cron job's mail, an Airflow XCom). Why not configure
structlog here: it is global state that belongs to the application.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

__all__ = ["LOGGER_NAME", "get_logger"]

LOGGER_NAME = "batchphone"

logging.getLogger(LOGGER_NAME).addHandler(logging.NullHandler())


class _QuietLogger:
    """Resolves, at each call, whether structlog is configured (it may be after import)."""

    __slots__ = ("_stdlib", "_structlog")

    def __init__(self) -> None:
        self._structlog: Any = structlog.get_logger(LOGGER_NAME)
        self._stdlib: Any = structlog.wrap_logger(
            logging.getLogger(LOGGER_NAME),
            processors=[
                structlog.stdlib.filter_by_level,  # cheap: nothing is built for a dropped event
                structlog.processors.KeyValueRenderer(key_order=["event"], sort_keys=True),
            ],
            wrapper_class=structlog.stdlib.BoundLogger,
        )

    def __getattr__(self, name: str) -> Any:
        target = self._structlog if structlog.is_configured() else self._stdlib
        return getattr(target, name)


def get_logger() -> Any:
    """The logger for library code: ``log.info("event", key=value)``."""
    return _QuietLogger()
