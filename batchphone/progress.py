"""How a run reports its progress: a Protocol with a no-op default.

The library calls these hooks; the CLI plugs in a tqdm bar. Nothing here prints.
"""

from __future__ import annotations

from typing import Protocol

from batchphone.models import RowResult

__all__ = ["NullProgress", "Progress"]


class Progress(Protocol):
    """Receives the events of a run, in order: start, then advance/paused, then close."""

    def start(self, total: int, *, done: int, calls_per_second: float | None) -> None:
        """``total`` input rows, ``done`` already final from a previous run."""

    def advance(self, result: RowResult) -> None:
        """One more row is final (never called for rows a stop left ``not_attempted``, so a
        bar stays where the run stopped)."""

    def paused(self, seconds: float, *, calls_per_second: float | None = None) -> None:
        """The API answered 429: every worker waits ``seconds``; from then on the run keeps
        ``calls_per_second`` (``None``: the budget did not change)."""

    def close(self) -> None:
        """The run is over (also after an error)."""


class NullProgress:
    """Progress that goes nowhere: the default for library callers."""

    def start(self, total: int, *, done: int, calls_per_second: float | None) -> None:
        """Ignore the start."""

    def advance(self, result: RowResult) -> None:
        """Ignore a finished row."""

    def paused(self, seconds: float, *, calls_per_second: float | None = None) -> None:
        """Ignore a pause."""

    def close(self) -> None:
        """Nothing to close."""
