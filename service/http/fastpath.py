"""The inference routes, dispatched straight to their handlers, past FastAPI's router.

``POST /v1/models/{model}[/versions/{version}]/(predict|embed)`` and
``POST /v2/models/{model}[/versions/{version}]/infer`` are nearly every
request a server sees. FastAPI reaches their handler through its exception
middleware, an exit stack, a match against every route and a dependency
solver: ~120 µs of event-loop CPU per request on the 2-core test machine
(a trivial route under uvicorn: 162-175 µs per request through FastAPI, 41-54
µs as a bare ASGI callable; docs/performance.md, "The request path"), on the
loop that is each process's bottleneck.

This middleware sits inside the gateway and the memory budget (so ids, auth,
limits, the access log and ``Connection: close`` apply as to every route)
and calls the same handler functions the routes declare, mapping their
exceptions with the application's own exception handlers: one behaviour,
two ways in. It also counts the inference requests in progress against
``max_inflight_requests`` (:mod:`.inflight`; the transport sheds most of
those past it before they get here). Every other request, and any method
other than POST on these paths (a 405 with ``Allow``), goes on to FastAPI;
the routes stay declared there, so the OpenAPI document is unchanged.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from fusionserve.service.http.errors import send_busy
from fusionserve.service.http.inflight import HELD, InflightBound
from fusionserve.service.http.routes import inference_path

#: A route's handler: the request, the model, the version (None: the model's policy).
Handler = Callable[[Request, str, str | None], Awaitable[Response]]
ExceptionHandler = Callable[[Request, Any], Response | Awaitable[Response]]


class FastRoutes:
    """The handlers the routers register for the fast path: (door, action) -> handler."""

    def __init__(self) -> None:
        self._handlers: dict[tuple[str, str], Handler] = {}

    def add(self, door: str, action: str, handler: Handler) -> None:
        """``door``: ``v1`` or ``v2``; ``action``: the path's last segment."""
        self._handlers[(door, action)] = handler

    def match(self, path: str) -> tuple[Handler, str, str | None] | None:
        found = inference_path(path)
        if found is None:
            return None
        handler = self._handlers.get((found.door, found.action))
        return None if handler is None else (handler, found.model, found.version)


class FastRouteMiddleware:
    """Serve the registered inference routes directly; everything else goes to ``app``."""

    def __init__(
        self,
        app: ASGIApp,
        routes: FastRoutes,
        exception_handlers: Mapping[Any, ExceptionHandler],
        bound: InflightBound | None = None,
    ) -> None:
        self.app = app
        self.routes = routes
        #: The application's own table (``FastAPI.exception_handlers``), read at each error.
        self.exception_handlers = exception_handlers
        #: Inference requests in progress in this process, and their bound (shared with the transport).
        self.bound = bound if bound is not None else InflightBound(None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            found = self.routes.match(scope["path"])
            if found is not None:
                handler, model, version = found
                if HELD in scope:  # counted by the transport, released by the application
                    await self._serve(scope, receive, send, handler, model, version)
                    return
                bound = self.bound
                if bound.full():
                    bound.refused(model)
                    await send_busy(send, scope["path"], bound.message)
                    return
                bound.count += 1
                try:
                    await self._serve(scope, receive, send, handler, model, version)
                finally:
                    bound.count -= 1
                return
        await self.app(scope, receive, send)

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, handler: Handler, model: str, version: str | None
    ) -> None:
        params = {"model": model} if version is None else {"model": model, "version": version}
        scope["path_params"] = params
        request = Request(scope, receive, send)
        try:
            response = await handler(request, model, version)
        except Exception as exc:
            response = await self._on_error(request, exc)
        await response(scope, receive, send)

    async def _on_error(self, request: Request, exc: Exception) -> Response:
        """The response the application's handler for ``exc`` gives (most specific class first)."""
        for kind in type(exc).__mro__:
            handler = self.exception_handlers.get(kind)
            if handler is not None:
                response = handler(request, exc)
                return await response if inspect.isawaitable(response) else response
        raise exc
