"""A request's work is cancelled when its client hangs up: by the transport's hook, or by a watcher."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import Request

from fusionserve.service.http.disconnect import HANGUP, ClientGone, unless_disconnected


def _request(scope_extra: dict[str, Any], messages: asyncio.Queue[dict[str, Any]]) -> Request:
    scope = {"type": "http", "method": "POST", "path": "/", "headers": [], **scope_extra}
    return Request(scope, messages.get)


async def test_the_transport_hook_cancels_the_work_and_is_cleared_after() -> None:
    request = _request({HANGUP: None}, asyncio.Queue())
    started = asyncio.Event()
    cancelled = False

    async def work() -> str:
        nonlocal cancelled
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled = True
            raise
        return "never"

    serving = asyncio.ensure_future(unless_disconnected(request, work()))
    await started.wait()
    hang_up = request.scope[HANGUP]
    assert callable(hang_up)
    hang_up()  # what the transport's connection_lost does
    with pytest.raises(ClientGone):
        await serving
    assert cancelled and request.scope[HANGUP] is None


async def test_the_hook_is_cleared_when_the_work_finishes_and_a_late_call_does_nothing() -> None:
    request = _request({HANGUP: None}, asyncio.Queue())
    seen: list[Any] = []

    async def work() -> str:
        seen.append(request.scope[HANGUP])
        return "answer"

    assert await unless_disconnected(request, work()) == "answer"
    assert callable(seen[0]) and request.scope[HANGUP] is None
    seen[0]()  # a hang-up after the answer: nothing to cancel, no error


async def test_without_the_hook_a_watcher_reads_the_disconnect() -> None:
    messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    request = _request({}, messages)

    async def work() -> str:
        await asyncio.sleep(10)
        return "never"

    serving = asyncio.ensure_future(unless_disconnected(request, work()))
    await asyncio.sleep(0.01)
    await messages.put({"type": "http.disconnect"})
    with pytest.raises(ClientGone):
        await serving


async def test_the_callers_own_cancellation_is_not_mistaken_for_a_hang_up() -> None:
    request = _request({HANGUP: None}, asyncio.Queue())
    serving = asyncio.ensure_future(unless_disconnected(request, asyncio.sleep(10)))
    await asyncio.sleep(0.01)
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving
