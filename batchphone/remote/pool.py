"""The worker pool: one task group, bounded streams, N workers, one consumer.

It knows nothing of HTTP or files: it moves jobs from a producer to ``process`` and results to
``consume``. Back-pressure comes from the bounded streams: a slow API slows the reader down, so
memory stays flat however large the input is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from anyio.abc import ObjectSendStream

__all__ = ["run_pool"]

Job = TypeVar("Job")
Result = TypeVar("Result")


async def run_pool(
    produce: Callable[[ObjectSendStream[Job], ObjectSendStream[Result]], Awaitable[None]],
    process: Callable[[Job], Awaitable[Result]],
    consume: Callable[[Result], Awaitable[None]],
    *,
    concurrency: int,
    buffer: int | None = None,
) -> None:
    """Run ``produce`` -> ``concurrency`` workers calling ``process`` -> ``consume``, then return.

    ``produce`` gets the job stream and a result stream of its own (for results that need no
    worker, such as invalid rows); it must return when it has nothing more to send, and the pool
    closes both streams for it. ``consume`` is called from one task only, in completion order.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    size = concurrency * 2 if buffer is None else buffer
    job_send, job_receive = anyio.create_memory_object_stream[Job](size)
    result_send, result_receive = anyio.create_memory_object_stream[Result](size)

    async def producer(jobs: ObjectSendStream[Job], results: ObjectSendStream[Result]) -> None:
        async with jobs, results:
            await produce(jobs, results)

    async def worker(
        jobs: anyio.abc.ObjectReceiveStream[Job], results: ObjectSendStream[Result]
    ) -> None:
        async with jobs, results:
            async for job in jobs:
                await results.send(await process(job))

    async def consumer() -> None:
        async with result_receive:
            async for result in result_receive:
                await consume(result)

    async with anyio.create_task_group() as group:
        group.start_soon(consumer)
        for _ in range(concurrency):
            group.start_soon(worker, job_receive.clone(), result_send.clone())
        group.start_soon(producer, job_send, result_send)
        await job_receive.aclose()
