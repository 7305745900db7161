"""The FastAPI application: routes, middleware and the one error mapping."""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from fusionserve.service import __version__
from fusionserve.service.config import Settings
from fusionserve.service.dataplane import DataPlane
from fusionserve.service.errors import FusionServeError, InternalError, Overloaded
from fusionserve.service.http.budget import MemoryBudgetMiddleware
from fusionserve.service.http.disconnect import ClientGone
from fusionserve.service.http.errors import error_response
from fusionserve.service.http.fastpath import FastRouteMiddleware, FastRoutes
from fusionserve.service.http.inflight import HELD, InflightBound
from fusionserve.service.http.middleware import Activity, GatewayMiddleware
from fusionserve.service.http.native import native_router
from fusionserve.service.http.openai import openai_router
from fusionserve.service.http.openapi import install_openapi
from fusionserve.service.http.playground import playground_router
from fusionserve.service.http.v2 import v2_router
from fusionserve.service.logs import request_id_var
from fusionserve.service.memory import MemoryBudget, process_budget

log = logging.getLogger("fusionserve.http")

#: nginx's status for "the client closed the connection before the answer"; logged, never received.
CLIENT_CLOSED_REQUEST = 499

DESCRIPTION = """
Serve multimodal fusion models. POST any subset of **image** (file), **audio**
(file) and **text** to `/v1/models/{model}/predict` or `/embed` as
`multipart/form-data`, or JSON with base64 files. The Open Inference Protocol
(KServe V2) lives under `/v2`. Try a model in the browser at [/ui](/ui).

Errors: native routes answer `{"error": {"code", "message"}, "request_id"}`,
`/v2` routes the protocol's `{"error": "message"}`. A method a path does not
serve answers `405` with an `Allow` header. When the server runs with an API
token, inference routes need `Authorization: Bearer <token>` (401 otherwise).
Any route may also meet the transport's limits before it runs: 408 (headers or
body too slow), 414 (URL too long), 431 (headers too large), each closing the
connection, and 503 `too_many_connections`.
"""


class HttpApp:
    """The HTTP application: fusionserve's front, then FastAPI for what the front does not serve.

    Every HTTP request meets the front first: the gateway (ids, auth, body
    limit, access log, ``Connection: close`` while draining), the memory
    budget, then the fast inference routes (:mod:`.fastpath`); the rest goes
    on into FastAPI. As FastAPI middleware the front sat inside FastAPI's own
    layers (its OpenTelemetry check, body limit, exception telemetry and
    Starlette's server-error wrapper), which every inference request crossed
    for nothing: docs/performance.md, "Fourth step". Errors on the fast routes
    are mapped by the FastAPI application's exception handlers, so the
    behaviour is the same either way in.
    """

    def __init__(self, fastapi: FastAPI, front: ASGIApp, inflight_bound: InflightBound) -> None:
        self.fastapi = fastapi
        self.front = front
        #: Shared with the transport, which sheds requests past it before they reach the app.
        self.inflight_bound = inflight_bound

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope["app"] = self.fastapi
            try:
                await self.front(scope, receive, send)
            finally:
                held = scope.pop(HELD, None)
                if held is not None:
                    held.count -= 1
        else:
            await self.fastapi(scope, receive, send)


def create_http_app(
    dataplane: DataPlane,
    settings: Settings,
    activity: Activity | None = None,
    budget: MemoryBudget | None = None,
) -> HttpApp:
    """``budget``: the process's memory budget, shared with the gRPC door; None makes one."""
    app = FastAPIOffline(title="fusionserve", version=__version__, description=DESCRIPTION)
    fast = FastRoutes()
    busy = Overloaded("server busy")  # only its class is read: the outcome label "overloaded"
    bound = InflightBound(
        settings.max_inflight_requests or None,
        lambda model: dataplane.record_rejected(model, "http", busy),
        lambda: dataplane.draining,
    )
    app.include_router(native_router(dataplane, fast))
    app.include_router(openai_router(dataplane))
    app.include_router(playground_router())
    app.include_router(v2_router(dataplane, settings, fast))

    @app.exception_handler(FusionServeError)
    async def _core_error(request: Request, exc: FusionServeError) -> JSONResponse:
        return error_response(exc, request_id_var.get())

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        from fusionserve.service.errors import InvalidInput

        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return error_response(InvalidInput(f"invalid request: {problems}"), request_id_var.get())

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if request.url.path.startswith("/v2"):
            return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)
        body = {"error": {"code": code, "message": message}, "request_id": request_id_var.get()}
        # exc.headers carries Allow on a 405 (RFC 9110 requires it).
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect) -> Response:
        # The client hung up before its body arrived whole: nobody is left to answer,
        # and it is no fault of the server (no traceback at error level).
        log.info("client disconnected before sending the whole request to %s", request.url.path)
        model = str(request.path_params.get("model", ""))
        if model:
            dataplane.record_rejected(model, "http", asyncio.CancelledError())
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(ClientGone)
    async def _client_left(request: Request, exc: ClientGone) -> Response:
        # Its work was cancelled (the data plane counted it as cancelled); nobody reads this.
        log.info("client disconnected while %s was being served", request.url.path)
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(InternalError(f"internal error: {type(exc).__name__}"), request_id_var.get())

    install_openapi(app)
    if budget is None:
        budget = process_budget(settings, dataplane.metrics)
    # Innermost: the inference routes past the router, inside the budget and the gateway.
    fast_routes = FastRouteMiddleware(
        app, routes=fast, exception_handlers=app.exception_handlers, bound=bound
    )
    # Outermost: request ids, auth, the access log and Connection: close cover everything.
    front = GatewayMiddleware(
        MemoryBudgetMiddleware(fast_routes, budget=budget),
        max_body_bytes=settings.max_body_bytes,
        api_token=settings.api_token,
        admin_token=settings.admin_token,
        draining=lambda: dataplane.draining,
        activity=activity,
    )
    return HttpApp(app, front, bound)
