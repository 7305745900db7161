"""Run a blocking call on a worker thread and await it from the event loop, cheaply.

``loop.run_in_executor`` wraps the executor's ``concurrent.futures.Future``
in an asyncio future (``wrap_future``: chained callbacks copying state both
ways) and, under uvloop, checks on every call that the function is not a
coroutine. A request crosses to a thread once or twice (decode, then compute),
so this does the one thing needed instead: a lane (:class:`fusionserve.service.lanes.Lanes`,
cheaper than an executor's ``submit`` too) sets the result of a plain
asyncio future through ``call_soon_threadsafe``.

Cancelling the awaiting task does not stop a call already running (as with
``run_in_executor``); its result is then dropped. Work the lanes drop before
running it (shut down with ``cancel_futures``) cancels the future.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from fusionserve.service.lanes import Lanes

T = TypeVar("T")


def _settle(future: asyncio.Future[T], result: T | None, error: BaseException | None) -> None:
    if future.done():  # the caller gave up meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]


def offload(lanes: Lanes, fn: Callable[..., T], *args: object) -> asyncio.Future[T]:
    """``fn(*args)`` on one of ``lanes``' threads; await the returned future."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def work() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # handed to the awaiting task, which re-raises it
            loop.call_soon_threadsafe(_settle, future, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, future, result, None)

    def dropped() -> None:  # shut down with cancel_futures before it ran
        loop.call_soon_threadsafe(future.cancel)

    lanes.submit(work, dropped)
    return future
