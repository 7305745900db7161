"""The drain waits for HTTP requests that began before it, not for those that begin during it."""

from __future__ import annotations

import asyncio

from fusionserve.service.http.middleware import Activity, GatewayMiddleware


async def test_requests_begun_during_the_drain_do_not_hold_it() -> None:
    activity = Activity()
    release: dict[str, asyncio.Event] = {}

    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        await release[scope["path"]].wait()
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    gateway = GatewayMiddleware(app, max_body_bytes=1024, api_token=None, admin_token=None, activity=activity)

    async def request(path: str) -> None:
        release[path] = asyncio.Event()
        scope = {"type": "http", "path": path, "method": "POST", "headers": [(b"content-length", b"0")]}

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            pass

        await gateway(scope, receive, send)

    before = asyncio.create_task(request("/before"))
    await asyncio.sleep(0)
    activity.mark_drain()
    during = asyncio.create_task(request("/during"))  # a client retrying through the drain
    await asyncio.sleep(0)
    assert activity.active == 2 and activity.early == 1
    assert not await activity.wait_idle(0.05)  # the one from before is still in progress
    release["/before"].set()
    await before
    assert await activity.wait_idle(0.05)  # the one begun during the drain does not hold it
    assert activity.active == 1
    release["/during"].set()
    await during
    assert activity.active == 0 and activity.early == 0


async def test_before_any_drain_every_request_counts() -> None:
    activity = Activity()
    activity.active = 1
    assert not await activity.wait_idle(0.03)
    activity.active = 0
    assert await activity.wait_idle(0.03)
