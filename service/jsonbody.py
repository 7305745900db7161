"""JSON request bodies parsed with bounded work: nesting, counts and numbers.

``json.loads`` builds the whole document before anyone can look at it: a body
of ``[{}, {}, ...]`` is tens of millions of objects (GBs, seconds on the event
loop) before a count limit is checked, and deep nesting raises
``RecursionError``. Here:

- ``load_object`` parses a top-level object key by key; lists under the keys
  given a limit are parsed element by element, stopping at the limit, and a
  key outside ``allowed`` is refused before its value is parsed.
- ``check_structure`` bounds how many objects, lists and strings a body may
  hold with C-speed byte counts before any parsing (an upper bound: brackets
  inside strings count too, so the bounds are generous).
- Nesting past the interpreter's recursion limit, ``NaN``/``Infinity`` tokens
  and integers too long to convert are the client's error, never a 500.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from typing import Any

from fusionserve.service.errors import InvalidInput, LimitExceeded, brief

scanstring = json.decoder.scanstring  # type: ignore[attr-defined]

#: Generous bounds for a V2 JSON header (``check_structure``): a real request has
#: a few dozen objects and strings; a nested image tensor ``[1,224,224,3]`` ~50,000 lists.
MAX_OBJECTS = 65_536
MAX_LISTS = 1_048_576
MAX_STRINGS = 65_536
#: Values (by their separating commas) in one JSON body. Parsing JSON numbers
#: holds the interpreter for ~0.2 s per million (longer on a loaded machine), on
#: the event loop; larger tensors travel as binary data (V2 binary extension,
#: gRPC raw contents), which costs nothing to parse.
MAX_VALUES = 1_048_576

_WS = re.compile(r"[ \t\n\r]*")


def _no_constant(token: str) -> Any:
    raise InvalidInput(f"JSON token {token} is not a number JSON allows (use a finite number)")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def _invalid(what: str, exc: BaseException) -> InvalidInput:
    if isinstance(exc, RecursionError):
        return InvalidInput(f"{what} is nested too deeply")
    detail = str(exc) if isinstance(exc, json.JSONDecodeError) else brief(str(exc), 120)
    return InvalidInput(f"{what} is not valid JSON: {detail}")


def _text(data: bytes | str, what: str) -> str:
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{what} is not valid UTF-8 JSON (byte {exc.start})") from exc


def check_structure(data: bytes, what: str = "request body") -> None:
    """Refuse a body with more objects, lists, strings or values than any real request holds.

    Counted a slice at a time with running totals, stopping at the first bound
    passed: a hostile 64 MiB body passes its bound within the first slice
    (well under a millisecond), where counting it whole held the event loop
    for ~200 ms (a two-byte pattern alone took 100 ms).
    """
    counts = _Counts()
    for start in range(0, len(data), _SLICE):
        counts.add(data, start, min(len(data), start + _SLICE))
        counts.check(what)


#: Bytes counted between checks of the running totals.
_SLICE = 1 << 20


class _Counts:
    """Running byte counts of a body's structure, checked against the bounds."""

    def __init__(self) -> None:
        self.objects = self.lists = self.quotes = self.escaped = self.commas = 0

    def add(self, data: bytes, start: int, end: int) -> None:
        self.objects += data.count(b"{", start, end)
        self.lists += data.count(b"[", start, end)
        self.quotes += data.count(b'"', start, end)
        # An escaped quote starting in [start, end); the pattern cannot overlap itself.
        self.escaped += data.count(b'\\"', start, min(len(data), end + 1))
        self.commas += data.count(b",", start, end)

    def check(self, what: str) -> None:
        for count, limit, kind in ((self.objects, MAX_OBJECTS, "objects"), (self.lists, MAX_LISTS, "lists")):
            if count > limit:
                raise LimitExceeded(f"{what} holds more than {limit} JSON {kind}")
        # Every escaped quote brings its own quote, so this only grows slice by slice.
        if self.quotes - self.escaped > 2 * MAX_STRINGS:
            raise LimitExceeded(f"{what} holds more than {MAX_STRINGS} JSON strings")
        if self.commas > MAX_VALUES:
            raise LimitExceeded(
                f"{what} holds more than {MAX_VALUES} JSON values; send large tensors as binary data "
                "(the V2 binary tensor extension, or raw contents over gRPC)"
            )


def loads(data: bytes | str, what: str = "request body") -> Any:
    """``json.loads`` whose every failure is an :class:`InvalidInput` naming ``what``."""
    try:
        return _DECODER.decode(_text(data, what))
    except InvalidInput:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, too many digits, depth
        raise _invalid(what, exc) from exc


def load_object(
    data: bytes | str,
    *,
    list_limits: Mapping[str, int],
    allowed: Collection[str] | None = None,
    what: str = "request body",
) -> Any:
    """Parse ``data``; a top-level object is parsed key by key with bounded lists.

    A list under a key of ``list_limits`` with more elements than its limit
    raises :class:`LimitExceeded` as soon as the element past the limit is
    met; a key not in ``allowed`` (when given) raises :class:`InvalidInput`
    before its value is parsed. Anything but an object is returned as parsed.
    """
    text = _text(data, what)
    start = _WS.match(text, 0).end()  # type: ignore[union-attr]
    if text[start : start + 1] != "{":
        return loads(text, what)
    try:
        document, end = _object(text, start + 1, list_limits, allowed)
        end = _WS.match(text, end).end()  # type: ignore[union-attr]
        if end != len(text):
            raise json.JSONDecodeError("Extra data", text, end)
        return document
    except InvalidInput:
        raise
    except (ValueError, RecursionError) as exc:
        raise _invalid(what, exc) from exc
    except IndexError as exc:
        raise InvalidInput(f"{what} is not valid JSON: it ends early") from exc


def _object(
    text: str, index: int, limits: Mapping[str, int], allowed: Collection[str] | None
) -> tuple[dict[str, Any], int]:
    document: dict[str, Any] = {}
    index = _WS.match(text, index).end()  # type: ignore[union-attr]
    if text[index] == "}":
        return document, index + 1
    while True:
        if text[index] != '"':
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, index)
        key, index = scanstring(text, index + 1)
        if allowed is not None and key not in allowed:
            raise InvalidInput(
                f"unknown field {brief(key)}; expected any of {sorted(allowed)}", fields=[brief(key)]
            )
        index = _WS.match(text, index).end()  # type: ignore[union-attr]
        if text[index] != ":":
            raise json.JSONDecodeError("Expecting ':' delimiter", text, index)
        index = _WS.match(text, index + 1).end()  # type: ignore[union-attr]
        try:
            if key in limits and text[index] == "[":
                document[key], index = _bounded_list(text, index + 1, key, limits[key])
            else:
                document[key], index = _DECODER.raw_decode(text, index)
        except LimitExceeded:
            raise
        except InvalidInput as exc:  # a NaN/Infinity token: name the field it is in
            raise InvalidInput(f"field {brief(key)}: {exc.message}", field=brief(key)) from exc
        except RecursionError as exc:
            raise InvalidInput(f"field {brief(key)} is nested too deeply", field=brief(key)) from exc
        index = _WS.match(text, index).end()  # type: ignore[union-attr]
        if text[index] == "}":
            return document, index + 1
        if text[index] != ",":
            raise json.JSONDecodeError("Expecting ',' delimiter", text, index)
        index = _WS.match(text, index + 1).end()  # type: ignore[union-attr]


def _bounded_list(text: str, index: int, key: str, limit: int) -> tuple[list[Any], int]:
    values: list[Any] = []
    index = _WS.match(text, index).end()  # type: ignore[union-attr]
    if text[index] == "]":
        return values, index + 1
    while True:
        if len(values) == limit:
            raise LimitExceeded(f"'{key}' holds more than {limit} elements; the limit is {limit}", field=key)
        value, index = _DECODER.raw_decode(text, index)
        values.append(value)
        index = _WS.match(text, index).end()  # type: ignore[union-attr]
        if text[index] == "]":
            return values, index + 1
        if text[index] != ",":
            raise json.JSONDecodeError("Expecting ',' delimiter", text, index)
        index = _WS.match(text, index + 1).end()  # type: ignore[union-attr]
