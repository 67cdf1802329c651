"""The producer: rows not final yet, through the screen, to the workers.

Rows that need no worker (invalid, duplicate, what the screen settled, the canary's verdicts)
go to the consumer as ``Settled`` groups on the pool's result stream: one way for every
result, and one stream trip per group rather than per row. On a stop the producer just ends:
rows it never reached are not journaled one by one (the result file gets them as
``not_attempted`` when it is written, see ``outfile.Unreached``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any

import anyio
from anyio.abc import ObjectSendStream

from batchphone.files.journal import Journal
from batchphone.models import PhoneState, RowResult, Status, UpdateRequest
from batchphone.modes.canary_check import CanaryCheck
from batchphone.modes.dispatch import Dispatch, Outcome, Settled, settle
from batchphone.remote.lookup import Lookup
from batchphone.remote.screen import Screen
from batchphone.remote.stop import Stop
from batchphone.rows.prepare import Prepared

__all__ = ["Producer"]


class Producer:
    """Rows not final yet, through the screen, to the workers (``produce``)."""

    #: settled rows wait for at most this many more before they go to the consumer
    GROUP = 1000

    def __init__(
        self,
        prepared: Iterator[list[Prepared]],
        journal: Journal,
        stop: Stop,
        dispatch: Dispatch,
        *,
        retry_failed: bool = False,
        screen: Screen | None = None,
        canary: CanaryCheck | None = None,
        lookup: Lookup | None = None,
    ) -> None:
        self.prepared = prepared
        self.journal = journal
        self.stop = stop
        self.dispatch = dispatch
        self.retry_failed = retry_failed
        self.screen = screen
        self.canary = canary
        #: reads back the rows whose answer was lost (``None``: nothing is sent)
        self.lookup = lookup
        self._settled: list[RowResult] = []

    def _batches(self) -> Iterator[list[Prepared]]:
        state, retry = self.journal.state, self.retry_failed
        for items in self.prepared:
            yield [
                _with_prior(item, state.befores)
                for item in items
                if not state.is_final(item.row, retry_failed=retry)
            ]

    async def produce(
        self, jobs: ObjectSendStream[Any], results: ObjectSendStream[Outcome]
    ) -> None:
        batches = self._batches()
        while self.stop.reason is None:
            # reading and normalizing a batch is blocking work: keep it off the event loop
            items = await anyio.to_thread.run_sync(next, batches, None)
            if items is None:
                break
            if self.screen is not None:
                await self._take_screened(items, jobs, results)
            else:
                for item in items:
                    if self.stop.reason is not None:
                        break
                    await self._take(item, jobs, results)
            await self._flush_settled(results)
        if self.stop.reason is None:
            await self.dispatch.flush(jobs)
            if self.canary is not None:
                await self._check_canary(results)
        await self._flush_settled(results)
        if self.lookup is not None:
            await settle(self.dispatch, self.lookup, self.stop, jobs, results)

    async def _take_screened(
        self,
        items: Iterable[Prepared],
        jobs: ObjectSendStream[Any],
        results: ObjectSendStream[Outcome],
    ) -> None:
        assert self.screen is not None
        # closed even when the run is cancelled halfway through a batch
        async with contextlib.aclosing(self.screen.screen(items)) as screened:
            async for item in screened:
                # results the screen made before the stop (failed reads) are kept; what
                # comes after it would only be rows left unsent
                unsent = not isinstance(item, RowResult) or item.status is Status.NOT_ATTEMPTED
                if unsent and self.stop.reason is not None:
                    break
                await self._take(item, jobs, results)

    async def _take(
        self, item: Prepared, jobs: ObjectSendStream[Any], results: ObjectSendStream[Outcome]
    ) -> None:
        if isinstance(item, RowResult):
            self._settled.append(item)
            if len(self._settled) >= self.GROUP:  # (the send is also the loop's checkpoint)
                await self._flush_settled(results)
            return
        await self._flush_settled(results)  # results go on in the order they were decided
        if self.stop.reason is not None:
            return  # not journaled: the result file lists it as not_attempted
        await self.dispatch.send(item, jobs)
        if self.canary is not None and self.canary.admit(item):
            await self.dispatch.flush(jobs)
            await self._check_canary(results)

    async def _check_canary(self, results: ObjectSendStream[Outcome]) -> None:
        assert self.canary is not None
        bad = await self.canary.check()
        if bad:  # each row was counted once already, by its first result
            await results.send(Settled(bad, counted=True))

    async def _flush_settled(self, results: ObjectSendStream[Outcome]) -> None:
        if self._settled:
            settled, self._settled = self._settled, []
            await results.send(Settled(settled))


def _with_prior(item: Prepared, befores: dict[int, PhoneState]) -> Prepared:
    """A resumed row that an earlier call may have changed carries its journaled image."""
    if isinstance(item, UpdateRequest) and item.row in befores:
        return replace(item, prior=befores[item.row])
    return item
