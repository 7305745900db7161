"""Cancel a request's work when its HTTP client hangs up.

Without this, a client that gives up while its row is queued leaves the row
to be computed for nobody (and counted a success). Once the body is read, the
only message ASGI can still deliver is ``http.disconnect``: a watcher waits
for it beside the work and cancels the work when it comes, so the batcher
withdraws the row before it is computed and the data plane counts the
request as ``cancelled``.

Under fusionserve's own HTTP transport (:mod:`.transport`) no watcher is
needed: the transport marks each request's scope with :data:`HANGUP`, and
its ``connection_lost`` calls the callback stored there, so a request costs
no task and no waiter for this. Any other ASGI server gets the watcher task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

T = TypeVar("T")


#: Scope key set by the transport (to None) on every request it parses; a handler may store a
#: callback there, which the transport calls if the connection is lost before the answer is sent.
HANGUP = "fusionserve.hangup"


class ClientGone(Exception):
    """The client disconnected before its answer was ready (nobody to answer)."""


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; cancel it and raise :class:`ClientGone` if the client hangs up first.

    ``work`` runs in the caller's own task; only the watcher is a task of its
    own, which cancels the caller when the disconnect comes. (A task for the
    work too, plus ``asyncio.wait`` over both, cost every request two tasks
    and a waiter for the same effect.)
    """
    caller = asyncio.current_task()
    if caller is None:  # not in a task: nothing to cancel, so nothing to watch
        return await work
    finished = gone = False

    def hang_up() -> None:
        nonlocal gone
        if not finished:
            gone = True
            caller.cancel()

    def watcher_done(watcher: asyncio.Future[None]) -> None:
        if not (watcher.cancelled() or watcher.exception() is not None):
            hang_up()

    scope = request.scope
    watcher: asyncio.Future[None] | None = None
    if HANGUP in scope:
        scope[HANGUP] = hang_up
    else:
        watcher = asyncio.ensure_future(_disconnected(request))
        watcher.add_done_callback(watcher_done)
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise
        _uncancel(caller)
        raise ClientGone("the client disconnected while its request was being served") from None
    finally:
        finished = True
        if watcher is None:
            scope[HANGUP] = None
        else:
            watcher.cancel()


def _uncancel(task: asyncio.Task[object]) -> None:
    """Forget the cancellation this module asked for (Python 3.11+ counts them)."""
    uncancel = getattr(task, "uncancel", None)
    if uncancel is not None:
        uncancel()
