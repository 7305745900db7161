"""Turn native HTTP request bodies (multipart or JSON) into core ``RawInputs`` rows.

Only parsing and shape checks live here; decoding the files is the core's job.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from fusionserve.service import jsonbody
from fusionserve.service.errors import InvalidInput, UnsupportedMediaType, brief
from fusionserve.service.http.multipart import parse_multipart
from fusionserve.service.model.rows import RawInputs

FILE_FIELDS = ("image", "audio")
ITEM_FIELDS = ("image", "audio", "text")
OPTION_FIELDS = ("top_k", "include")


@dataclass
class ParsedRequest:
    rows: list[RawInputs]
    top_k: int | None
    batch: bool  # the JSON batch form ("items") was used
    #: predict's ``include`` (checked against the allowed values by the core).
    include: list[str] = field(default_factory=list)


async def parse_request(request: Request, *, allow_top_k: bool, max_items: int = 64) -> ParsedRequest:
    """The body's rows; a JSON ``items`` list longer than ``max_items`` is refused while parsing."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        return _parse_multipart(await request.body(), content_type, allow_top_k)
    if media_type == "application/json":
        return _parse_json(await request.body(), allow_top_k, max_items)
    raise UnsupportedMediaType(
        f"Content-Type {media_type or '(none)'!r} is not supported; "
        "send multipart/form-data (fields image, audio, text) or application/json"
    )


def _parse_multipart(body: bytes, content_type: str, allow_top_k: bool) -> ParsedRequest:
    allowed = ITEM_FIELDS + (OPTION_FIELDS if allow_top_k else ())
    parts = parse_multipart(body, content_type, max_parts=len(allowed) + 2)
    names = [p.name for p in parts]
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        raise InvalidInput(f"unknown field(s) {unknown}; expected any of {list(allowed)}", fields=unknown)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InvalidInput(f"field(s) {repeated} given more than once; give each once", fields=repeated)
    values: dict[str, Any] = {}
    top_k: int | None = None
    include: list[str] = []
    for part in parts:
        if part.name in FILE_FIELDS:
            if part.filename is None:
                raise InvalidInput(
                    f"field {part.name!r} must be a file upload, not a text field", field=part.name
                )
            values[part.name] = part.data
            continue
        try:
            text = part.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"field {part.name!r}: not valid UTF-8", field=part.name) from exc
        if part.name == "text":
            values["text"] = text
        elif part.name == "include":
            include = _parse_include(text)
        else:
            top_k = _parse_top_k(text)
    if any(len(v) for v in values.values()):
        # A form's fields left empty (a browser or Swagger UI sends every input, an unset
        # file as an empty part) are not given; only an all-empty form is refused.
        values = {name: value for name, value in values.items() if len(value)}
    return ParsedRequest(rows=[_row(values, prefix="")], top_k=top_k, batch=False, include=include)


def _parse_json(body: bytes, allow_top_k: bool, max_items: int = 64) -> ParsedRequest:
    options = OPTION_FIELDS if allow_top_k else ()
    jsonbody.check_structure(body, "body")
    doc = jsonbody.load_object(
        body,
        list_limits={"items": max_items},
        allowed=("items", *ITEM_FIELDS, *options),
        what="body",
    )
    if not isinstance(doc, dict):
        raise InvalidInput("JSON body must be an object")
    top_k = _parse_top_k(doc.get("top_k")) if allow_top_k else None
    include = _parse_include(doc.get("include")) if allow_top_k else []
    if "items" in doc:
        unknown = sorted(set(doc) - {"items", *options})
        if unknown:
            raise InvalidInput(f"unknown field(s) {unknown} beside 'items'", fields=unknown)
        items = doc["items"]
        if not isinstance(items, list):
            raise InvalidInput("'items' must be a list of objects")
        rows = [_json_item(item, f"items[{i}].") for i, item in enumerate(items)]
        return ParsedRequest(rows=rows, top_k=top_k, batch=True, include=include)
    item = {k: v for k, v in doc.items() if k not in options}
    return ParsedRequest(rows=[_json_item(item, "")], top_k=top_k, batch=False, include=include)


def _json_item(item: Any, prefix: str) -> RawInputs:
    if not isinstance(item, dict):
        raise InvalidInput(f"{prefix or 'body'} must be an object with image, audio, text")
    unknown = sorted(set(item) - set(ITEM_FIELDS))
    if unknown:
        raise InvalidInput(
            f"{prefix}unknown field(s) {unknown}; expected any of {list(ITEM_FIELDS)}", fields=unknown
        )
    values: dict[str, Any] = {}
    for name in FILE_FIELDS:
        if item.get(name) is None:
            continue
        encoded = item[name]
        if not isinstance(encoded, str):
            raise InvalidInput(f"{prefix}{name}: must be a base64 string", field=name)
        try:
            values[name] = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput(f"{prefix}{name}: not valid base64 ({exc})", field=name) from exc
    if item.get("text") is not None:
        if not isinstance(item["text"], str):
            raise InvalidInput(f"{prefix}text: must be a string", field="text")
        values["text"] = item["text"]
    return _row(values, prefix)


def _row(values: dict[str, Any], prefix: str) -> RawInputs:
    for name, value in values.items():
        if len(value) == 0:
            raise InvalidInput(f"{prefix}{name}: field is empty", field=name)
    return RawInputs(image=values.get("image"), audio=values.get("audio"), text=values.get("text"))


#: top_k is checked against max_top_k later; this only keeps the conversion bounded.
_TOP_K_DIGITS = 9


def _parse_include(value: Any) -> list[str]:
    """``"embeddings,attribution"`` (form or JSON) or a JSON list of those words."""
    if value is None:
        return []
    if isinstance(value, str):
        words = value.split(",")
    elif isinstance(value, list) and all(isinstance(v, str) for v in value) and len(value) <= 8:
        words = value
    else:
        raise InvalidInput(
            "include must be a comma-separated string or a list of strings, e.g. 'embeddings,attribution'",
            field="include",
        )
    return [w.strip() for w in words if w.strip()]


def _parse_top_k(value: Any) -> int | None:
    """An integer from JSON (an integral float too) or a multipart text field.

    ``1e400`` and ``Infinity`` (infinite floats), ``NaN``, booleans and
    digit strings of any other script are the client's error, never an
    ``OverflowError`` on its way to a 500.
    """
    if value is None:
        return None
    top_k: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        top_k = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        top_k = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit() and len(text) <= _TOP_K_DIGITS:
            top_k = int(text)
    if top_k is None:
        raise InvalidInput(f"top_k must be an integer, got {brief(value)}", field="top_k")
    if top_k < 1:
        raise InvalidInput(f"top_k must be a positive integer, got {brief(value)}", field="top_k")
    return top_k


def parse_timeout_ms(value: str | None, max_ms: float = 3_600_000) -> float | None:
    """The per-request deadline header, in seconds (None = model default)."""
    if value is None:
        return None
    try:
        ms = float(value)
    except ValueError as exc:
        raise InvalidInput(f"header X-Request-Timeout-Ms must be a number, got {brief(value)}") from exc
    if not 0 < ms <= max_ms or ms != ms:
        raise InvalidInput(f"header X-Request-Timeout-Ms must lie in (0, {max_ms:g}], got {brief(value)}")
    return ms / 1000.0
