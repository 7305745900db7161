"""The gateway middleware: request ids, the streaming body limit and bearer-token auth."""

from __future__ import annotations

from unittest.mock import MagicMock

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from fusionserve.service.config import Settings
from fusionserve.service.http.app import create_http_app
from fusionserve.service.http.middleware import GatewayMiddleware


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"bytes": len(body)})


def make_client(**options: object) -> httpx.AsyncClient:
    app = Starlette(
        routes=[
            Route("/v1/models/m/predict", echo, methods=["POST"]),
            Route("/v2/repository/index", echo, methods=["POST"]),
            Route("/health/live", echo, methods=["GET"]),
        ]
    )
    settings = {"max_body_bytes": 1000, "api_token": None, "admin_token": None, **options}
    wrapped = GatewayMiddleware(app, **settings)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=wrapped), base_url="http://test")


async def test_request_id_is_echoed_or_generated() -> None:
    async with make_client() as client:
        mine = await client.get("/health/live", headers={"X-Request-ID": "trace-42"})
        assert mine.headers["x-request-id"] == "trace-42"
        unsafe = await client.get("/health/live", headers={"X-Request-ID": "bad id\twith spaces"})
        assert unsafe.headers["x-request-id"] != "bad id\twith spaces"
        a, b = (await client.get("/health/live")), (await client.get("/health/live"))
        assert a.headers["x-request-id"] != b.headers["x-request-id"]


async def test_declared_and_streamed_bodies_over_the_limit_get_413() -> None:
    async with make_client() as client:
        assert (await client.post("/v1/models/m/predict", content=b"x" * 1000)).json() == {"bytes": 1000}
        declared = await client.post("/v1/models/m/predict", content=b"x" * 1001)
        assert declared.status_code == 413
        assert "max_body_bytes=1000" in declared.json()["error"]["message"]


async def test_streamed_body_over_the_limit_gets_413_from_the_real_app() -> None:
    """No Content-Length: the limit applies while the body streams in."""
    app = create_http_app(MagicMock(), Settings(max_body_bytes=1000))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

        async def chunks():
            for _ in range(5):
                yield b"y" * 300

        streamed = await client.post(
            "/v1/models/m/predict", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413
        assert "max_body_bytes=1000" in streamed.json()["error"]["message"]


async def test_inference_and_admin_tokens_are_separate() -> None:
    async with make_client(api_token="infer-secret", admin_token="admin-secret") as client:
        assert (await client.post("/v1/models/m/predict", content=b"")).status_code == 401
        wrong = await client.post("/v1/models/m/predict", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        ok = await client.post("/v1/models/m/predict", headers={"Authorization": "Bearer infer-secret"})
        assert ok.status_code == 200
        admin_with_infer = await client.post(
            "/v2/repository/index", headers={"Authorization": "Bearer infer-secret"}
        )
        assert admin_with_infer.status_code == 401
        assert admin_with_infer.json() == {"error": "invalid bearer token"}  # V2 clients' shape on /v2
        admin = await client.post("/v2/repository/index", headers={"Authorization": "Bearer admin-secret"})
        assert admin.status_code == 200
        assert (await client.get("/health/live")).status_code == 200  # probes stay open
