"""``POST /v1/embeddings``: the OpenAI embeddings API, so retrieval stacks that speak it work unchanged.

Request ``{"model", "input": str | [str], "encoding_format": "float" | "base64"}``
(``dimensions`` only when it equals the model's; ``user`` is ignored). Answer
``{"object": "list", "data": [{"object": "embedding", "index", "embedding"}],
"model", "usage": {"prompt_tokens", "total_tokens"}}``; ``base64`` is the
little-endian float32 bytes, as OpenAI sends them.

Each input is one row through the same core as ``/v1/models/{model}/embed``;
the vector is the model's fused embedding of that row. **Extension**: an
input that is a ``data:`` URL (``data:image/png;base64,...``,
``data:audio/wav;base64,...``) is an image or a sound file, so one request may
embed text, pictures and sounds into the same space. Errors keep the
server's JSON shape, whose ``error.message`` the OpenAI clients show.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
from fastapi import APIRouter, Request

from fusionserve.service import jsonbody
from fusionserve.service.dataplane import DataPlane
from fusionserve.service.errors import InvalidInput, UnsupportedMediaType
from fusionserve.service.http import schemas
from fusionserve.service.http.native import INFERENCE_ERRORS, TIMEOUT_HEADER
from fusionserve.service.http.openapi import native_errors, ok
from fusionserve.service.http.parsing import parse_timeout_ms
from fusionserve.service.model.rows import RawInputs

ENCODING_FORMATS = ("float", "base64")
FIELDS = ("model", "input", "encoding_format", "dimensions", "user")


def _parse_body(body: bytes, max_items: int) -> dict[str, Any]:
    """The request, parsed with the same bounds as every JSON door (depth, counts, ``input`` length)."""
    jsonbody.check_structure(body, "body")
    doc = jsonbody.load_object(body, list_limits={"input": max_items}, allowed=FIELDS, what="body")
    if not isinstance(doc, dict):
        raise InvalidInput("JSON body must be an object with model and input")
    if not isinstance(doc.get("model"), str) or not doc["model"]:
        raise InvalidInput("'model' must name a model (a non-empty string)", field="model")
    if not isinstance(doc.get("user", ""), str | None):
        raise InvalidInput("'user' must be a string", field="user")
    fmt = doc.get("encoding_format", "float")
    if fmt not in ENCODING_FORMATS:
        raise InvalidInput(
            f"encoding_format {fmt!r} is not supported; allowed: {list(ENCODING_FORMATS)}",
            field="encoding_format",
        )
    return doc


def _inputs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    if isinstance(value, list) and not value:
        raise InvalidInput("'input' is an empty list", field="input")
    raise InvalidInput(
        "'input' must be a string or a list of strings (token-id arrays are not supported)", field="input"
    )


def _data_url(value: str, index: int) -> RawInputs:
    """``data:<type>/<subtype>;base64,<payload>`` → an image or audio row (the sniffed bytes decide)."""
    head, sep, payload = value.partition(",")
    if not sep or not head.endswith(";base64"):
        raise InvalidInput(
            f"input[{index}]: a data URL must be 'data:<type>;base64,<payload>'", field="input"
        )
    media_type = head[len("data:") : -len(";base64")].strip().lower()
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"input[{index}]: not valid base64 ({exc})", field="input") from exc
    if not data:
        raise InvalidInput(f"input[{index}]: the data URL is empty", field="input")
    if media_type.startswith("image/"):
        return RawInputs(image=data)
    if media_type.startswith("audio/") or media_type in ("video/webm", "video/mp4"):
        return RawInputs(audio=data)
    raise UnsupportedMediaType(
        f"input[{index}]: data URL type {media_type or '(none)'!r}; send image/* or audio/*", field="input"
    )


def _row(value: str, index: int) -> RawInputs:
    if value.startswith("data:"):
        return _data_url(value, index)
    if not value:
        raise InvalidInput(f"input[{index}]: empty string", field="input")
    return RawInputs(text=value)


def _check_model_takes(dataplane: DataPlane, model: str, rows: list[RawInputs]) -> int | None:
    """400 (before any decoding) when the model cannot take what was sent; returns its fused dims."""
    config = dataplane.model_info(model).config
    if config is None:
        return None
    taken = [m.value for m in config.modalities.present()]
    for index, row in enumerate(rows):
        for modality in row.modalities():
            if modality not in taken:
                raise InvalidInput(
                    f"input[{index}]: model {model!r} takes no {modality}; it takes {', '.join(taken)} "
                    "(images and audio as data: URLs)",
                    field="input",
                )
    fused = [o.dims for o in config.outputs if o.kind.value == "embedding" and o.source == "fused"]
    return fused[0] if fused else None


def _vector(values: np.ndarray, fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode("ascii")
    return [float(v) for v in values]


#: The request body as the OpenAPI document shows it (parsing stays in :func:`_parse_body`).
OPENAI_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["model", "input"],
                    "properties": {
                        "model": {"type": "string", "minLength": 1, "example": "digits-embed"},
                        "input": {
                            "oneOf": [
                                {"type": "string", "minLength": 1},
                                {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
                            ],
                            "description": "text, or a data: URL of an image or a sound (extension)",
                            "example": "seven",
                        },
                        "encoding_format": {"type": "string", "enum": list(ENCODING_FORMATS)},
                        "dimensions": {"type": ["integer", "null"], "description": "must equal the model's"},
                        "user": {"type": ["string", "null"], "description": "ignored"},
                    },
                    "additionalProperties": False,
                }
            }
        },
    }
}


def openai_router(dataplane: DataPlane) -> APIRouter:
    router = APIRouter()

    @router.post(
        "/v1/embeddings",
        tags=["inference"],
        summary="OpenAI-compatible embeddings",
        description="The OpenAI embeddings API for embedding models: each input is one row, its "
        "vector the model's fused embedding. Extension: an input may be a `data:image/...;base64,` "
        "or `data:audio/...;base64,` URL.",
        responses=ok(schemas.OpenAIEmbeddingList) | native_errors(*INFERENCE_ERRORS),
        openapi_extra=OPENAI_BODY,
    )
    async def embeddings(request: Request) -> dict[str, Any]:
        doc = _parse_body(await request.body(), dataplane.max_batch_items)
        model = doc["model"]
        rows = [_row(v, i) for i, v in enumerate(_inputs(doc.get("input")))]
        dims = _check_model_takes(dataplane, model, rows)
        wanted_dims = doc.get("dimensions")
        if wanted_dims is not None and wanted_dims != dims:
            raise InvalidInput(
                f"dimensions={wanted_dims!r}: model {model!r} gives {dims}-dimensional embeddings "
                "and cannot shorten them",
                field="dimensions",
            )
        results = await dataplane.embed(
            model,
            None,
            rows,
            timeout_s=parse_timeout_ms(request.headers.get(TIMEOUT_HEADER)),
            protocol="http",
        )
        fmt = doc.get("encoding_format", "float")
        tokens = sum(r.tokens for r in results)
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _vector(r.fused, fmt)}
                for i, r in enumerate(results)
            ],
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    return router
