"""The pool's side of a run: one call stack and what reads and sends through it (``connect``),
the worker pool itself (``run_pool``), and the journal's fsync while it runs."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from batchphone.errors import BatchphoneError
from batchphone.files.journal import Journal
from batchphone.models import UpdateRequest
from batchphone.modes.canary_check import CanaryCheck
from batchphone.modes.command import CommandPlan
from batchphone.modes.dispatch import Outcome
from batchphone.modes.faults import Faults
from batchphone.modes.producer import Producer
from batchphone.modes.recorder import Recorder
from batchphone.remote.batch import BatchSender
from batchphone.remote.calls import Calls, open_calls
from batchphone.remote.lookup import Lookup
from batchphone.remote.pool import run_pool
from batchphone.remote.screen import Screen
from batchphone.remote.send import RowSender, fetch_license
from batchphone.remote.stop import Stop

__all__ = ["Sending", "connect", "one_error", "pool", "sync_journal"]


@dataclass(frozen=True, slots=True)
class Sending:
    """The sending side of a run: one call stack, and what reads and sends through it."""

    calls: Calls
    sender: RowSender
    screen: Screen | None
    canary: CanaryCheck | None
    #: reads back the rows whose answer was lost (``None`` when nothing is sent)
    settle: Lookup | None


def connect(
    plan: CommandPlan,
    transport: httpx.AsyncBaseTransport | None,
    stop: Stop,
    recorder: Recorder,
) -> Sending:
    """Wire the sending side: one call stack, and the readers and senders on top of it."""
    assert plan.endpoint is not None  # decide() refuses a command that calls without one
    calls = open_calls(
        plan.settings,
        plan.endpoint,
        transport,
        stop=stop,
        progress=recorder.progress,
        call_times=recorder.journal.state.call_times,
        call_log=recorder,
    )
    lookup = Lookup(calls)
    batches = plan.sends and plan.batch_size is not None
    canary = recorder.canary
    intend = recorder.intend
    return Sending(
        calls=calls,
        sender=RowSender(
            calls, BatchSender(calls, intend=intend) if batches else None, intend=intend
        ),
        screen=Screen(plan.screen, lookup, stop=stop) if plan.screen.active else None,
        canary=CanaryCheck(canary, lookup, stop) if canary is not None else None,
        settle=lookup if plan.sends else None,
    )


async def pool(
    producer: Producer,
    recorder: Recorder,
    sending: Sending | None,
    concurrency: int,
    faults: Faults,
) -> None:
    """The worker pool, from the producer to the recorder (one worker when nothing is sent)."""
    produce = faults.producing(producer.produce)
    if sending is None:  # nothing to send: every row is settled by the producer
        await run_pool(produce, _never, recorder.consume, concurrency=1)
        return
    await fetch_license(sending.calls)
    sender = sending.sender
    process: Callable[[Any], Awaitable[Outcome]]
    process = sender.process if sender.batch is None else sender.process_batch
    await run_pool(produce, faults.sending(process), recorder.consume, concurrency=concurrency)


async def _never(request: UpdateRequest) -> Outcome:
    raise AssertionError(f"row {request.row}: a run that sends nothing got a row to send")


async def sync_journal(journal: Journal) -> None:
    """Flush and fsync the journal every second while the run goes on."""
    while True:
        await anyio.sleep(1.0)
        journal.flush()  # here, on the loop: the buffer is not thread-safe
        try:
            await anyio.to_thread.run_sync(journal.fsync)
        except OSError as exc:  # a full disk: the run stops, the result file is still written
            journal.fail(exc)


@contextlib.contextmanager
def one_error() -> Iterator[None]:
    """Raise a ``BatchphoneError`` from inside the pool's task groups as itself.

    The library's contract is one ``BatchphoneError`` (one line, its exit code), never an
    ``ExceptionGroup`` around it: a damaged file met while the pool runs must read the same as
    one met before it starts.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        errors = [exc for exc in leaves if isinstance(exc, BatchphoneError)]
        if errors and len(errors) == len(leaves):
            raise errors[0] from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves
