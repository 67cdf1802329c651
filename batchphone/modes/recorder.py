"""The pool's consumer, and the only writer of row results: journal, canary, progress bar."""

from __future__ import annotations

import time
from collections.abc import Iterable

from batchphone.files.journal import Journal
from batchphone.logs import get_logger
from batchphone.models import Reason, RowResult, Status, UpdateRequest
from batchphone.modes.dispatch import Outcome, Pending, Settled
from batchphone.progress import Progress
from batchphone.remote.canary import Canary
from batchphone.remote.stop import Stopped

__all__ = ["OPEN", "Recorder"]

#: Statuses that leave a row to the next run (resumed, not counted as done on the bar).
OPEN = frozenset({Status.NOT_ATTEMPTED, Status.UNSETTLED})

log = get_logger()


class Recorder:
    """The consumer, and the only writer of row results: journal, canary, progress bar.

    It also writes ahead: the intents of each call that may change users (``intend``) and the
    start and end of every call (``started``, ``answered``: a ``calls.CallLog``), from the task
    that makes the call, before it leaves.
    """

    def __init__(
        self, journal: Journal, progress: Progress, canary: Canary | None, *, hold: float
    ) -> None:
        self.journal = journal
        self.progress = progress
        self.canary = canary
        self.journal_open = True
        self.pending = Pending()
        #: how long after its start an unanswered call may still be counted by the server
        self.hold = hold
        #: rows made final by an API call in this process (the summary's ``sent_now``)
        self.sent = 0

    async def consume(self, outcome: Outcome) -> None:
        if isinstance(outcome, RowResult):
            self._record(outcome)
        elif isinstance(outcome, Settled):
            for result in outcome.results:
                self._record(result, advance=not outcome.counted)
        else:
            for result in outcome:
                self._record(result)

    def _record(self, result: RowResult, *, advance: bool = True) -> None:
        self.journal.append(result, ts=time.time(), urgent=result.attempts > 0)
        self.pending.done(result)
        if self.canary is not None:
            self.canary.observe(result)
        if result.status is Status.FAILED:
            # a warning, so that --quiet still shows it; no API text, which may echo the row
            log.warning(
                "row_failed",
                row=result.row,
                reason=result.reason,
                http_status=result.http_status,
                error_code=result.error_code,
            )
        # a row left unsent by a stop does not move the bar: it stays where the run stopped;
        # nor does an unsettled one: it moves when a read settles it
        if advance and result.status not in OPEN:
            self.sent += 1 if result.attempts else 0
            self.progress.advance(result)

    def intend(self, requests: Iterable[UpdateRequest]) -> None:
        """Journal, before the call leaves, each row's before-image and what the call sets."""
        if not self.journal_open:
            raise AssertionError("a call that may change users after the journal was closed")
        self.journal.append_intent(list(requests), ts=time.time())
        if self.journal.failed is not None:
            # the record is not on disk (a full disk stopped the run): the call must not leave
            raise Stopped(Reason.STOPPED)

    def started(self, ts: float) -> object:
        """Journal that a call starts (``calls.CallLog``): a restart's limiter counts it."""
        if not self.journal_open:
            return None
        return self.journal.append_start(ts, until=ts + self.hold)

    def answered(self, ts: float, token: object) -> None:
        """Journal the time a call was answered (or given up): the limiter's seed."""
        if self.journal_open:
            self.journal.append_call(ts, token if isinstance(token, str) else None)
