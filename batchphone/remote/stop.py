"""The stop of a run: one small token, passed down to every call and checked before it starts.

A run stops for a signal, a fatal answer (401/403), the circuit breaker, a failed canary or a
local error (``fail``: a full disk under the journal, the budget store, the input changed).
From the first stop on, no new call starts: every wait for a limiter slot, a 429 pause or a
retry's backoff runs inside a cancel scope that the stop cancels, so those waits end at once
(the limiter itself knows nothing of stops). Calls already on the wire finish, unless the stop
is *hard* (a second Ctrl-C, a 401/403): then they are cancelled too.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

import anyio

from batchphone.errors import BatchphoneError
from batchphone.models import Reason

__all__ = ["STOP_SIGNALS", "Stop", "Stopped"]

#: The signals that stop a run: SIGINT, and SIGTERM where it exists (Windows has none).
STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None)) if s is not None
)


class Stopped(Exception):
    """A call was not started (or was cancelled on the wire) because the run is stopping.

    ``maybe_applied``: the call (or an earlier attempt of it) left the process and no answer
    says what became of it, so the server may have applied it: its rows are unsettled, never
    "not attempted".
    """

    def __init__(self, reason: Reason, *, maybe_applied: bool = False) -> None:
        super().__init__(reason.value)
        self.reason = reason
        self.maybe_applied = maybe_applied


class Stop:
    """Why the run stops (``None`` while it goes on), and the scopes a stop cancels."""

    __slots__ = ("_calls", "_hard", "_waits", "fatal", "interrupted", "local", "reason")

    def __init__(self) -> None:
        self.reason: Reason | None = None
        #: the error that stopped the run, when one did (its exit code wins)
        self.fatal: BatchphoneError | None = None
        #: a signal asked for the stop
        self.interrupted = False
        #: the local error that asked for the stop (``fail``), when one did
        self.local: BatchphoneError | None = None
        self._hard = False
        self._waits: set[anyio.CancelScope] = set()
        self._calls: set[anyio.CancelScope] = set()

    @property
    def in_flight(self) -> int:
        """Calls on the wire now."""
        return len(self._calls)

    def request(
        self, reason: Reason, *, hard: bool = False, fatal: BatchphoneError | None = None
    ) -> None:
        """Start nothing new from now on; ``hard`` also cancels the calls on the wire."""
        if self.reason is None:
            self.reason = reason
        if fatal is not None and self.fatal is None:
            self.fatal = fatal
        for scope in list(self._waits):
            scope.cancel()
        if hard:
            self._hard = True
            for scope in list(self._calls):
                scope.cancel()

    def fail(self, error: BatchphoneError) -> None:
        """A local error: stop as a first Ctrl-C does (the calls in flight finish)."""
        if self.local is None:
            self.local = error
        self.request(Reason.STOPPED, fatal=error)

    def check(self) -> None:
        """Raise ``Stopped`` when the run is stopping: call it before a call starts."""
        if self.reason is not None:
            raise Stopped(self.reason)

    @contextmanager
    def waiting(self) -> Iterator[anyio.CancelScope]:
        """A scope for a wait before a call (slot, pause, backoff): the first stop ends it.

        Raises ``Stopped`` when the wait was cut short.
        """
        self.check()
        with anyio.CancelScope() as scope:
            self._waits.add(scope)
            try:
                yield scope
            finally:
                self._waits.discard(scope)
        self.check()

    @contextmanager
    def calling(self) -> Iterator[anyio.CancelScope]:
        """A scope for a call on the wire: a hard stop cancels it (``Stopped`` is raised)."""
        with anyio.CancelScope() as scope:
            if self._hard:
                scope.cancel()
            self._calls.add(scope)
            try:
                yield scope
            finally:
                self._calls.discard(scope)
        if scope.cancelled_caught:
            # the request may have reached the server before the cancel: nobody knows
            raise Stopped(self.reason or Reason.INTERRUPTED, maybe_applied=True)
