"""Pipelined bidirectional streams: answer each request as soon as it is done.

A backend keeps one stream open and sends requests without waiting; each is
handled concurrently (bounded per stream), so they batch together in the
core, and answers come back in completion order carrying the request id.
``handle`` turns its own errors into answer messages, so one bad request
never ends the stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

Request = TypeVar("Request")
Answer = TypeVar("Answer")

#: Requests of one stream in flight or answered but not yet sent; the reader waits beyond this.
STREAM_CONCURRENCY = 128
_DONE = object()


async def pipelined(
    requests: AsyncIterator[Request],
    handle: Callable[[Request], Awaitable[Answer]],
    limit: int = STREAM_CONCURRENCY,
) -> AsyncIterator[Answer]:
    results: asyncio.Queue[object] = asyncio.Queue()
    slots = asyncio.Semaphore(limit)
    pending: set[asyncio.Task[None]] = set()

    async def run_one(request: Request) -> None:
        try:
            results.put_nowait(await handle(request))
        except Exception as exc:  # a bug in handle: end the stream with it rather than hang
            results.put_nowait(exc)

    async def read_all() -> None:
        try:
            async for request in requests:
                await slots.acquire()
                task = asyncio.create_task(run_one(request))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*list(pending))
        except Exception as exc:
            results.put_nowait(exc)
        finally:
            results.put_nowait(_DONE)

    reader = asyncio.create_task(read_all())
    try:
        while (item := await results.get()) is not _DONE:
            if isinstance(item, Exception):
                raise item
            yield item  # type: ignore[misc]
            slots.release()  # only once delivered: a slow reader holds the sender back
    finally:
        reader.cancel()
        for task in list(pending):
            task.cancel()
