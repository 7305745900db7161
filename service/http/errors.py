"""The one table from core errors to HTTP statuses, and the JSON error body."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import Send

from fusionserve.service.errors import (
    DeadlineExceeded,
    FusionServeError,
    InvalidInput,
    LimitExceeded,
    LoadFailed,
    ModelNotFound,
    NotReady,
    Overloaded,
    PermissionDenied,
    UnprocessableInput,
    UnsupportedMediaType,
)

#: Most specific first: subclasses of InvalidInput before InvalidInput.
STATUS_TABLE: tuple[tuple[type[FusionServeError], int], ...] = (
    (UnsupportedMediaType, 415),
    (LimitExceeded, 413),
    (UnprocessableInput, 422),
    (InvalidInput, 400),
    (LoadFailed, 400),
    (PermissionDenied, 403),
    (ModelNotFound, 404),
    (Overloaded, 429),
    (NotReady, 503),
    (DeadlineExceeded, 504),
)


def http_status(error: FusionServeError) -> int:
    for kind, status in STATUS_TABLE:
        if isinstance(error, kind):
            return status
    return 500


def error_body(error: FusionServeError, request_id: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": error.to_dict()}
    if request_id:
        body["request_id"] = request_id
    return body


def error_response(error: FusionServeError, request_id: str | None = None) -> JSONResponse:
    headers = {"Retry-After": "1"} if isinstance(error, Overloaded | NotReady) else None
    return JSONResponse(error_body(error, request_id), status_code=http_status(error), headers=headers)


def door_error_json(v2: bool, code: str, message: str, request_id: str | None = None) -> bytes:
    """An error in its door's shape, as JSON: V2 ``{"error": message}`` (what V2 clients expect),
    native ``{"error": {"code", "message"}, "request_id"}``. For answers made below FastAPI
    (the gateway, the memory budget, the fast routes' bound, the transport's shed)."""
    if v2:
        return json.dumps({"error": message}).encode()
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if request_id:
        body["request_id"] = request_id
    return json.dumps(body).encode()


async def send_json(send: Send, status: int, payload: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    """A complete JSON answer over raw ASGI."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def send_busy(send: Send, path: str, message: str) -> None:
    """503 + ``Retry-After: 1`` in the error shape of the path's door (V2 or native)."""
    payload = door_error_json(path.startswith("/v2"), "overloaded", message)
    await send_json(send, 503, payload, [(b"retry-after", b"1")])
