"""The inference fast path: which requests it takes, what it passes on, how it maps errors."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from fusionserve.service.errors import InvalidInput
from fusionserve.service.http.fastpath import FastRouteMiddleware, FastRoutes
from fusionserve.service.http.inflight import InflightBound
from fusionserve.service.http.routes import inference_model


class Recorder:
    """The application behind the fast path: records what reached it."""

    def __init__(self) -> None:
        self.paths: list[tuple[str, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.paths.append((scope["method"], scope["path"]))
        await JSONResponse({"from": "app"})(scope, receive, send)


def make(handlers: dict[Any, Any] | None = None) -> tuple[httpx.AsyncClient, Recorder, list[Any]]:
    calls: list[Any] = []

    def handler_for(action: str) -> Any:
        async def handle(request: Request, model: str, version: str | None) -> Response:
            body = await request.body()
            calls.append((action, model, version, body, dict(request.path_params)))
            if model == "bad":
                raise InvalidInput("no such thing")
            if model == "boom":
                raise RuntimeError("bug")
            return JSONResponse({"from": action})

        return handle

    routes = FastRoutes()
    for door, action in (("v1", "predict"), ("v1", "embed"), ("v2", "infer")):
        routes.add(door, action, handler_for(action))
    app = Recorder()
    mapped = handlers if handlers is not None else {}
    middleware = FastRouteMiddleware(app, routes, mapped)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=middleware), base_url="http://t")
    return client, app, calls


async def test_inference_posts_reach_their_handler_without_the_application() -> None:
    client, app, calls = make()
    async with client:
        answers = [
            await client.post("/v1/models/m/predict", content=b"x"),
            await client.post("/v1/models/m/versions/2/embed", content=b"y"),
            await client.post("/v2/models/m/infer", content=b"z"),
        ]
    assert [a.json() for a in answers] == [{"from": "predict"}, {"from": "embed"}, {"from": "infer"}]
    assert calls == [
        ("predict", "m", None, b"x", {"model": "m"}),
        ("embed", "m", "2", b"y", {"model": "m", "version": "2"}),
        ("infer", "m", None, b"z", {"model": "m"}),
    ]
    assert app.paths == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/models/m/predict"),  # the application answers 405 with Allow
        ("POST", "/v1/models/m/infer"),  # no such route on the native door
        ("POST", "/v2/models/m/predict"),
        ("POST", "/v1/models/m/predict/extra"),
        ("POST", "/v2/repository/models/m/load"),
        ("GET", "/metrics"),
    ],
)
async def test_everything_else_goes_to_the_application(method: str, path: str) -> None:
    client, app, calls = make()
    async with client:
        answer = await client.request(method, path)
    assert answer.json() == {"from": "app"} and app.paths == [(method, path)] and not calls


async def test_errors_get_the_applications_own_handler_most_specific_first() -> None:
    async def invalid(request: Request, exc: InvalidInput) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=400)

    def anything(request: Request, exc: Exception) -> JSONResponse:  # handlers may be sync
        return JSONResponse({"error": type(exc).__name__}, status_code=500)

    client, _, _ = make({InvalidInput: invalid, Exception: anything})
    async with client:
        bad = await client.post("/v1/models/bad/predict")
        boom = await client.post("/v1/models/boom/predict")
    assert (bad.status_code, bad.json()) == (400, {"error": "no such thing"})
    assert (boom.status_code, boom.json()) == (500, {"error": "RuntimeError"})


async def test_an_error_no_handler_takes_is_raised_to_the_server() -> None:
    client, _, _ = make({})
    async with client:
        with pytest.raises(RuntimeError, match="bug"):
            await client.post("/v1/models/boom/predict")


async def test_past_the_inflight_bound_requests_get_503_before_their_body_is_read() -> None:
    import asyncio

    release = asyncio.Event()
    entered = asyncio.Event()
    read: list[bytes] = []

    async def slow(request: Request, model: str, version: str | None) -> Response:
        entered.set()
        read.append(await request.body())
        await release.wait()
        return JSONResponse({"from": "slow"})

    routes = FastRoutes()
    routes.add("v1", "predict", slow)
    routes.add("v2", "infer", slow)
    refused: list[tuple[str, str]] = []
    bound = InflightBound(1, lambda model: refused.append((model, "busy")))
    middleware = FastRouteMiddleware(Recorder(), routes, {}, bound=bound)
    transport = httpx.ASGITransport(app=middleware)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        first = asyncio.create_task(client.post("/v1/models/m/predict", content=b"first"))
        await entered.wait()
        busy = await client.post("/v1/models/m/predict", content=b"second")
        busy_v2 = await client.post("/v2/models/m/infer", content=b"third")
        release.set()
        assert (await first).status_code == 200
        again = await client.post("/v1/models/m/predict", content=b"fourth")
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert busy.json()["error"]["code"] == "overloaded"
    assert "max_inflight_requests=1" in busy.json()["error"]["message"]
    assert busy_v2.status_code == 503 and "busy" in busy_v2.json()["error"]  # the V2 error shape
    assert again.status_code == 200 and bound.count == 0
    assert read == [b"first", b"fourth"]  # the refused bodies were never read
    assert refused == [("m", "busy"), ("m", "busy")]


def test_inference_paths_name_their_model() -> None:
    assert inference_model("/v1/models/m/predict") == "m"
    assert inference_model("/v1/models/m/versions/3/embed") == "m"
    assert inference_model("/v2/models/x%2Fy/infer") == "x%2Fy"
    assert inference_model("/v2/models/m/versions/1/infer") == "m"
    for other in (
        "/v1/models/m",
        "/v2/models/m/ready",
        "/v1/models/m/infer",
        "/metrics",
        "/v2/repository/index",
    ):
        assert inference_model(other) is None
