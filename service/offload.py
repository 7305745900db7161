"""Run a blocking call on a worker thread and await it from the event loop, cheaply.

``loop.run_in_executor`` wraps the executor's ``concurrent.futures.Future``
in an asyncio future (``wrap_future``: chained callbacks copying state both
ways) and, under uvloop, checks on every call that the function is not a
coroutine. Every request crosses to a thread twice (decode, then compute),
so this does the one thing needed instead: the worker sets the result of a
plain asyncio future through ``call_soon_threadsafe``. The server's own
threads are :class:`fusionserve.service.lanes.Lanes` (cheaper still than an executor).

Cancelling the awaiting task does not stop a call already running (as with
``run_in_executor``); its result is then dropped. Work the executor drops
before running it (shut down with ``cancel_futures``) cancels the future.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
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


def offload(executor: Executor | Lanes, fn: Callable[..., T], *args: object) -> asyncio.Future[T]:
    """``fn(*args)`` on one of ``executor``'s threads; await the returned future."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def work() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # handed to the awaiting task, which re-raises it
            loop.call_soon_threadsafe(_settle, future, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, future, result, None)

    if isinstance(executor, Lanes):

        def dropped() -> None:  # shut down with cancel_futures before it ran
            loop.call_soon_threadsafe(future.cancel)

        executor.submit(work, dropped)
        return future
    submitted = executor.submit(work)
    # Work dropped before it ran (executor shut down with cancel_futures) must
    # not leave the caller waiting forever.
    submitted.add_done_callback(lambda done: done.cancelled() and loop.call_soon_threadsafe(future.cancel))
    return future
