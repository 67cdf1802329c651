"""The pool: every job processed once, bounded concurrency, local results, errors propagate."""

from __future__ import annotations

import anyio
import pytest
from anyio.abc import ObjectSendStream

from batchphone.remote.pool import run_pool

pytestmark = pytest.mark.anyio


async def test_every_job_once_with_at_most_n_in_flight() -> None:
    in_flight = 0
    peak = 0
    seen: list[int] = []

    async def produce(jobs: ObjectSendStream[int], results: ObjectSendStream[int]) -> None:
        for job in range(200):
            if job % 10 == 0:
                await results.send(-job)  # a result that needs no worker
            else:
                await jobs.send(job)

    async def process(job: int) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await anyio.sleep(0.001 * (job % 3))
        in_flight -= 1
        return job

    async def consume(result: int) -> None:
        seen.append(result)

    await run_pool(produce, process, consume, concurrency=4)
    assert sorted(seen) == sorted(
        [j for j in range(200) if j % 10] + [-j for j in range(0, 200, 10)]
    )
    assert peak == 4


async def test_backpressure_bounds_what_the_producer_runs_ahead() -> None:
    produced = 0
    max_ahead = 0
    consumed = 0

    async def produce(jobs: ObjectSendStream[int], results: ObjectSendStream[int]) -> None:
        nonlocal produced, max_ahead
        for job in range(100):
            await jobs.send(job)
            produced += 1
            max_ahead = max(max_ahead, produced - consumed)

    async def process(job: int) -> int:
        await anyio.sleep(0.001)
        return job

    async def consume(result: int) -> None:
        nonlocal consumed
        consumed += 1

    await run_pool(produce, process, consume, concurrency=2, buffer=3)
    assert consumed == 100
    # queue (3) + workers (2) + result buffer (3) + the one being handed over
    assert max_ahead <= 9


async def test_an_error_in_process_propagates_and_stops_everything() -> None:
    async def produce(jobs: ObjectSendStream[int], results: ObjectSendStream[int]) -> None:
        for job in range(1000):
            await jobs.send(job)

    async def process(job: int) -> int:
        if job == 5:
            raise RuntimeError("boom")
        return job

    async def consume(result: int) -> None:
        pass

    with pytest.raises(BaseException) as caught:  # an ExceptionGroup from the task group
        await run_pool(produce, process, consume, concurrency=3)
    assert "boom" in repr(
        caught.value.exceptions if hasattr(caught.value, "exceptions") else caught.value
    )


async def test_rejects_zero_concurrency() -> None:
    async def nothing(*_: object) -> None:
        return None

    with pytest.raises(ValueError):
        await run_pool(nothing, nothing, nothing, concurrency=0)  # type: ignore[arg-type]
