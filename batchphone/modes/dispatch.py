"""Rows on their way to the workers and back: what is pending, batches, and the settle rounds.

``Dispatch`` hands update requests to the workers, one per call or in batches (``--api
batch``), and keeps each pending until its result comes back (``Pending``). Rows whose
answer was lost come back ``unsettled``: ``settle`` reads their users back once every sent
row has its result, sends again those not applied, and reads those back in turn.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import ObjectSendStream

from batchphone.logs import get_logger
from batchphone.models import RowResult, Status, UpdateRequest
from batchphone.remote.lookup import Lookup
from batchphone.remote.settle import read_back
from batchphone.remote.stop import Stop

__all__ = ["SETTLE_ROUNDS", "Dispatch", "Outcome", "Pending", "Settled", "settle"]

#: rounds of reading back the rows whose answer was lost (the last one sends nothing)
SETTLE_ROUNDS = 2

log = get_logger()


@dataclass(frozen=True, slots=True)
class Settled:
    """Rows settled without a worker, on their way to the consumer like any other result.

    Invalid and duplicate rows, what the screen decided (unchanged, not found, failed reads) and
    the canary's verdicts. ``counted``: the rows moved the progress bar once already (a canary
    verdict replaces the row's first result).
    """

    results: list[RowResult]
    counted: bool = False


#: What reaches the consumer: a worker's row, a worker's batch, or rows settled without one.
Outcome = RowResult | list[RowResult] | Settled


class Pending:
    """Rows handed to the workers whose results have not come back yet, and those that came
    back ``unsettled`` (their requests, for the settle rounds)."""

    def __init__(self) -> None:
        self.sent: dict[int, UpdateRequest] = {}
        self.unsettled: list[UpdateRequest] = []
        self._changed: anyio.Event | None = None

    def add(self, requests: Iterable[UpdateRequest]) -> None:
        for request in requests:
            self.sent[request.row] = request

    def done(self, result: RowResult) -> None:
        request = self.sent.pop(result.row, None)
        if request is not None and result.status is Status.UNSETTLED:
            self.unsettled.append(request)
        if not self.sent and self._changed is not None:
            self._changed.set()

    async def drained(self) -> None:
        """Return once every row handed to the workers has its result."""
        while self.sent:
            self._changed = anyio.Event()
            await self._changed.wait()

    def take_unsettled(self) -> list[UpdateRequest]:
        taken, self.unsettled = self.unsettled, []
        return taken


class Dispatch:
    """Hands requests to the workers: one per call, or ``batch_size`` per patch call."""

    def __init__(self, pending: Pending, batch_size: int | None) -> None:
        self.pending = pending
        self.batch_size = batch_size
        self._batch: list[UpdateRequest] = []

    async def send(self, request: UpdateRequest, jobs: ObjectSendStream[Any]) -> None:
        if self.batch_size is None:
            self.pending.add([request])
            await jobs.send(request)
            return
        self._batch.append(request)
        if len(self._batch) >= self.batch_size:
            await self.flush(jobs)

    async def flush(self, jobs: ObjectSendStream[Any]) -> None:
        """Send the batch filled so far (nothing when it is empty)."""
        batch, self._batch = self._batch, []
        if batch:
            self.pending.add(batch)
            await jobs.send(batch)


async def settle(
    dispatch: Dispatch,
    lookup: Lookup,
    stop: Stop,
    jobs: ObjectSendStream[Any],
    results: ObjectSendStream[Outcome],
) -> None:
    """Read back the rows whose answer was lost, once every sent row has its result;
    send again those not applied, then read those back in turn."""
    pending = dispatch.pending
    for round_ in range(1, SETTLE_ROUNDS + 1):
        await pending.drained()
        requests = pending.take_unsettled()
        if not requests or stop.reason is not None:
            return  # stopping: they keep their unsettled records, a rerun reads them
        log.info("settle_round", round=round_, rows=len(requests))
        settled = await read_back(lookup, requests, last=round_ == SETTLE_ROUNDS)
        if settled.results:
            await results.send(Settled(settled.results))
        for request in settled.resend:
            if stop.reason is not None:
                break
            await dispatch.send(request, jobs)
        await dispatch.flush(jobs)
