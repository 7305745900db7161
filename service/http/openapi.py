"""The OpenAPI contract of the HTTP API, declared beside (not inside) the parsers.

The inference routes parse their bodies by hand (``fusionserve.service.http.parsing``,
``fusionserve.service.v2.codec``) because that is faster than FastAPI's form and model
validation, so FastAPI cannot see what they accept. This module says it:
request bodies via ``openapi_extra``, answers via pydantic models
(``fusionserve.service.http.schemas``) in ``responses``, and every status a route can
return with the error shape of its door and an example.

To describe a new route: pass ``responses=ok(Model) | native_errors(...)`` (or
``v2_errors``) and, for a hand-parsed body, ``openapi_extra=...``. A new
status: add it to ``_NATIVE_EXAMPLES`` / ``_V2_EXAMPLES``; a new error
header: ``_ERROR_HEADERS``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from fusionserve.service.http import schemas

# ------------------------------------------------------------------- statuses

#: status -> (error code, example message, description) for the error responses.
_NATIVE_EXAMPLES: dict[int, tuple[str, str, str]] = {
    400: ("invalid_input", "field 'image' must be a file upload, not a text field", "Malformed request"),
    401: ("unauthenticated", "missing bearer token", "API token required (server started with one)"),
    403: (
        "permission_denied",
        "load of model 'digits-fusion' refused: the server runs with model_control=none; "
        "start it with --model-control explicit",
        "Refused: repository control is off (--model-control none, the default)",
    ),
    404: ("not_found", "unknown model 'digits-fuson'", "Unknown model or version"),
    413: ("limit_exceeded", "request body exceeds max_body_bytes=67108864", "Over a configured limit"),
    415: (
        "unsupported_media_type",
        "image: file type 'application/pdf' is not supported; send PNG, JPEG, GIF, BMP, TIFF or WebP",
        "Unsupported file type or Content-Type",
    ),
    422: ("unprocessable", "no input: send at least one of image, audio, text", "Nothing to work on"),
    429: ("overloaded", "model 'digits-fusion' is overloaded; retry later", "Shed: the queue is full"),
    500: ("internal", "internal error: RuntimeError", "A fault on the server's side"),
    503: ("unavailable", "model 'digits-fusion' is not ready", "Not ready: loading, failed or draining"),
    504: ("deadline_exceeded", "deadline of 50 ms exceeded", "The request's deadline passed"),
}

_V2_EXAMPLES: dict[int, str] = {status: example[1] for status, example in _NATIVE_EXAMPLES.items()}

_RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
}
_ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    429: _RETRY_AFTER,
    503: _RETRY_AFTER,
}


def ref(model: type[BaseModel]) -> dict[str, str]:
    """A ``$ref`` to the model's schema, which the document's components will carry."""
    _REGISTERED.add(model)
    return {"$ref": f"#/components/schemas/{model.__name__}"}


_REGISTERED: set[type[BaseModel]] = set()


def _response(description: str, content: dict[str, Any], status: int) -> dict[str, Any]:
    body: dict[str, Any] = {"description": description, "content": content}
    if status in _ERROR_HEADERS:
        body["headers"] = _ERROR_HEADERS[status]
    return body


def native_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Error responses in the native shape ``{"error": {"code", "message"}, "request_id"}``."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        code, message, description = _NATIVE_EXAMPLES[status]
        example = {"error": {"code": code, "message": message}, "request_id": "5f0c6a3e9b2d4c1a"}
        content = {"application/json": {"schema": ref(schemas.ErrorResponse), "example": example}}
        out[status] = _response(description, content, status)
    return out


def v2_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Error responses in the Open Inference Protocol's shape ``{"error": "message"}``."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description = _NATIVE_EXAMPLES[status][2]
        content = {
            "application/json": {
                "schema": ref(schemas.V2ErrorResponse),
                "example": {"error": _V2_EXAMPLES[status]},
            }
        }
        out[status] = _response(description, content, status)
    return out


def ok(
    *models: type[BaseModel], description: str = "Success", status: int = 200, array: bool = False
) -> dict[int | str, dict[str, Any]]:
    """The success answer: one model, or ``oneOf`` several; ``array`` for a JSON list of them."""
    schema: dict[str, Any] = ref(models[0]) if len(models) == 1 else {"oneOf": [ref(m) for m in models]}
    if array:
        schema = {"type": "array", "items": schema}
    return {status: {"description": description, "content": {"application/json": {"schema": schema}}}}


def also(status: int, model: type[BaseModel], description: str) -> dict[int | str, dict[str, Any]]:
    """A non-error answer with another status (e.g. ``503 {"ready": false}``)."""
    content = {"application/json": {"schema": ref(model)}}
    return {status: _response(description, content, status)}


# ------------------------------------------------------------- request bodies

_FILE = {"type": "string", "format": "binary"}
_BASE64 = {"type": "string", "contentEncoding": "base64"}
_TOP_K = {
    "type": "integer",
    "minimum": 1,
    "description": "how many labels to return (default 5)",
    "example": 3,
}
_TEXT = {
    "type": "string",
    "minLength": 1,
    "description": "free text (the model's tokenizer applies)",
    "example": "seven",
}


_INCLUDE = {
    "type": "string",
    "description": "also answer `embeddings` and/or `attribution` (comma-separated) from the same run",
    "example": "embeddings",
}


def _json_item(with_top_k: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "image": {**_BASE64, "description": "an image file, base64-encoded"},
        "audio": {**_BASE64, "description": "an audio file, base64-encoded"},
        "text": _TEXT,
    }
    if with_top_k:
        properties["top_k"] = _TOP_K
        properties["include"] = _INCLUDE
    return {"type": "object", "properties": properties, "additionalProperties": False}


def native_body(*, top_k: bool) -> dict[str, Any]:
    """``openapi_extra`` for predict/embed: multipart files, JSON with base64, or the JSON batch form."""
    form: dict[str, Any] = {
        "image": {**_FILE, "description": "an image file (PNG, JPEG, GIF, BMP, TIFF, WebP)"},
        "audio": {**_FILE, "description": "an audio file (WAV, FLAC, OGG, MP3)"},
        "text": _TEXT,
    }
    if top_k:
        form["top_k"] = _TOP_K
        form["include"] = _INCLUDE
    batch_options = {"top_k": _TOP_K, "include": _INCLUDE} if top_k else {}
    batch = {
        "type": "object",
        "required": ["items"],
        "properties": {
            "items": {"type": "array", "items": _json_item(False), "description": "one object per row"},
            **batch_options,
        },
        "additionalProperties": False,
    }
    return {
        "requestBody": {
            "required": True,
            "description": "Any non-empty subset of image, audio and text. Each field at most once.",
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": form, "additionalProperties": False},
                    "encoding": {
                        "image": {"contentType": "image/*, application/octet-stream"},
                        "audio": {"contentType": "audio/*, application/octet-stream"},
                    },
                },
                "application/json": {
                    "schema": {"oneOf": [_json_item(top_k), batch]},
                    "examples": {
                        "text": {"summary": "text only", "value": {"text": "seven"}},
                        "batch": {
                            "summary": "batch form",
                            "value": {"items": [{"text": "three"}, {"text": "eight"}]},
                        },
                    },
                },
            },
        },
        "parameters": [
            {
                "name": "X-Request-Timeout-Ms",
                "in": "header",
                "required": False,
                "description": "deadline for this request in milliseconds (0 < t <= 3600000); "
                "a malformed or out-of-range value answers 400",
                "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": 3_600_000},
            }
        ],
        "security": [{}, {"bearer": []}],
    }


def v2_infer_body() -> dict[str, Any]:
    """``openapi_extra`` for V2 infer: JSON tensors, or the binary tensor extension."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": ref(schemas.V2InferRequest),
                    "example": {
                        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["seven"]}],
                        "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}],
                    },
                },
                "application/octet-stream": {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": "binary tensor extension: the JSON request header "
                        "(Inference-Header-Content-Length bytes) followed by the raw tensor bytes",
                    }
                },
            },
        },
        "parameters": [
            {
                "name": "Inference-Header-Content-Length",
                "in": "header",
                "required": False,
                "description": "length of the JSON header when binary tensor data follows it",
                "schema": {"type": "integer", "minimum": 0},
            },
            {
                "name": "Content-Encoding",
                "in": "header",
                "required": False,
                "description": "`gzip` or `deflate` for a compressed body",
                "schema": {"type": "string", "enum": ["gzip", "deflate", "identity"]},
            },
        ],
        "security": [{}, {"bearer": []}],
    }


def v2_json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for the small optional JSON bodies of the V2 repository routes."""
    return {"requestBody": {"required": False, "content": {"application/json": {"schema": ref(model)}}}}


# ------------------------------------------------------------- the document

_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


def install_openapi(app: FastAPI) -> None:
    """Replace FastAPI's generator with one that adds our components and drops what is not served.

    FastAPI documents a ``422 Validation Error`` on every route with a path
    parameter; this server answers request-validation failures with 400 in its
    own shape (``fusionserve.service.http.app``), so those entries are removed. Only the
    routes that really return 422 (``UnprocessableInput``) declare it.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            tags=app.openapi_tags,
        )
        components = document.setdefault("components", {})
        registry = components.setdefault("schemas", {})
        for model in sorted(_REGISTERED, key=lambda m: m.__name__):
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, definition in schema.pop("$defs", {}).items():
                registry.setdefault(name, definition)
            registry.setdefault(model.__name__, schema)
        for name in _VALIDATION_SCHEMAS:
            registry.pop(name, None)
        components.setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "only when the server runs with an API token (FUSIONSERVE_API_TOKEN)",
        }
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                invalid = responses.get("422", {})
                if "HTTPValidationError" in str(invalid.get("content", "")):
                    del responses["422"]
                _drop_empty_default(responses)
                _drop_inferred_schema(responses)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _drop_empty_default(responses: dict[str, Any]) -> None:
    """FastAPI adds an untyped 200 beside a route's declared success status; drop it when unused."""
    success = responses.get("200")
    untyped = success is not None and success.get("content") == {"application/json": {"schema": {}}}
    if untyped and any(code != "200" and code.startswith("2") for code in responses):
        del responses["200"]


def _drop_inferred_schema(responses: dict[str, Any]) -> None:
    """Keep only the declared model where FastAPI merged in the one it inferred from ``-> dict``.

    The routes keep their ``dict[str, Any]`` return annotation because FastAPI then
    serialises the answer with pydantic (in Rust), about 15x faster for an embedding
    than its ``jsonable_encoder`` fallback; the inferred schema says nothing, so it goes.
    """
    for response in responses.values():
        for media in response.get("content", {}).values():
            schema = media.get("schema", {})
            if str(schema.get("title", "")).startswith("Response "):
                _keep_declared(schema)


def _keep_declared(schema: dict[str, Any]) -> None:
    schema.pop("title", None)
    if "$ref" in schema or "oneOf" in schema:
        schema.pop("type", None)
        schema.pop("additionalProperties", None)
    elif isinstance(schema.get("items"), dict):
        _keep_declared(schema["items"])
