"""The one table from core errors to HTTP statuses, and the JSON error body."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

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
