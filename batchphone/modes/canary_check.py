"""``--canary N``: once the first N updates are done, read them back; stop the run on a miss."""

from __future__ import annotations

from batchphone.errors import BatchphoneError
from batchphone.logs import get_logger
from batchphone.models import Reason, RowResult, UpdateRequest
from batchphone.remote.canary import Canary
from batchphone.remote.lookup import Lookup
from batchphone.remote.stop import Stop

__all__ = ["CanaryCheck"]

log = get_logger()


class CanaryCheck:
    """The canary's read-back, and the stop it asks for when an update did not stick."""

    def __init__(self, canary: Canary, lookup: Lookup, stop: Stop) -> None:
        self.canary = canary
        self.lookup = lookup
        self.stop = stop

    def admit(self, request: UpdateRequest) -> bool:
        """Count ``request`` as sent; True when it filled the canary (time to ``check``)."""
        return self.canary.admit(request)

    async def check(self) -> list[RowResult]:
        """Wait until the canary rows are done and read them back; a miss stops the run.

        Returns the rows that did not stick, as their new (final) results.
        """
        canary = self.canary
        if canary.checked or not canary.sent or self.stop.reason is not None:
            return []  # nothing to check, or stopping anyway: no verdict, and no reads
        await canary.wait()
        bad = await canary.check(self.lookup.read_back)
        if not bad:
            log.info("canary_passed", rows=len(canary.sent))
            return []
        log.error("canary_failed", rows=len(canary.sent), mismatches=len(bad))
        # rows only: what differs names a login id and phones, and this message is logged
        # (the result file, 0600, has the details in error_message)
        unread = [r for r in bad if r.row in canary.unread]
        missed = [r for r in bad if r.row not in canary.unread]
        # a read that failed proves nothing either way: said apart from an update that missed
        groups = ((missed, "did not stick"), (unread, "could not be read back"))
        verdicts = [
            f"{len(group)} of {len(canary.sent)} updates {what} (rows {_rows(group)}"
            for group, what in groups
            if group
        ]
        self.stop.request(
            Reason.STOPPED,
            fatal=BatchphoneError(
                f"canary: {'), '.join(verdicts)}: see their error_message in the result file); "
                "the remaining rows were not sent: find the cause, then rerun the same command "
                "to resume"
            ),
        )
        return bad


def _rows(results: list[RowResult], most: int = 5) -> str:
    numbers = ", ".join(str(r.line or r.row) for r in results[:most])
    return numbers + (", ..." if len(results) > most else "")
