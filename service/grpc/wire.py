"""Count a request's repeated fields from its protobuf wire bytes, before parsing it.

Parsing a 64 MiB ``Predict`` of 33 million empty items builds 33 million
messages (GBs, seconds on the event loop) before any count limit can be
checked. The wire format says how many there are: each occurrence of a field
is a tag, and a length-delimited field says its own length. ``check_counts``
walks the tags (skipping every payload by its length, so a legitimate request
costs a handful of steps) and stops at the first field past its bound.

Counts are summed over the whole message (repeated occurrences of a singular
message field merge when parsed, so per-parent counts could be evaded).
Bytes that do not walk as protobuf are left to the real parser, which
reports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fusionserve.service.errors import LimitExceeded

#: Occurrences of one unpacked numeric field of V2 typed contents. Every
#: standard client sends these packed (one occurrence per tensor).
MAX_UNPACKED = 65_536
MAX_PARAMETERS = 1_024


@dataclass(frozen=True)
class Rule:
    """Bounds of one field: how often it occurs, how many payload bytes; and what is inside."""

    name: str
    max_count: int | None = None
    max_bytes: int | None = None
    nested: dict[int, Rule] | None = field(default=None, hash=False)


class _Malformed(Exception):
    """The bytes are not protobuf; the real parser will say so."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Malformed
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _walk(buf: memoryview, schema: dict[int, Rule], counts: dict[str, list[int]]) -> None:
    pos = 0
    end = len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        length = 0
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise _Malformed
        else:  # groups (3, 4) are not in our protos; 6, 7 are invalid
            raise _Malformed
        rule = schema.get(number)
        if rule is not None:
            seen = counts.setdefault(rule.name, [0, 0])
            seen[0] += 1
            seen[1] += length
            if rule.max_count is not None and seen[0] > rule.max_count:
                raise LimitExceeded(
                    f"{rule.name}: more than {rule.max_count} in one request", field=rule.name
                )
            if rule.max_bytes is not None and seen[1] > rule.max_bytes:
                raise LimitExceeded(
                    f"{rule.name}: more than {rule.max_bytes} bytes in one request", field=rule.name
                )
            if rule.nested is not None and wire == 2:
                _walk(buf[pos : pos + length], rule.nested, counts)
        if wire == 2:
            pos += length
    if pos > end:
        raise _Malformed


def check_counts(data: bytes, schema: dict[int, Rule]) -> None:
    """Raise :class:`LimitExceeded` naming the first field over its bound; else return."""
    try:
        _walk(memoryview(data), schema, {})
    except _Malformed:
        return


def native_schema(max_items: int) -> dict[int, Rule]:
    """``PredictRequest`` / ``EmbedRequest``: ``items`` (field 3) bounded by max_batch_items."""
    return {3: Rule("items", max_count=max_items)}


def v2_infer_schema(
    *, max_tensors: int, max_rank: int, max_bytes_elements: int, max_elements: int
) -> dict[int, Rule]:
    """``ModelInferRequest``: inputs, outputs, raw contents, parameters and typed contents."""
    parameters = Rule("parameters", max_count=MAX_PARAMETERS)
    varint_bytes = max_elements  # a packed varint element takes at least one byte
    contents = {
        number: Rule(f"contents.{name}", max_count=MAX_UNPACKED, max_bytes=varint_bytes)
        for number, name in (
            (1, "bool_contents"),
            (2, "int_contents"),
            (3, "int64_contents"),
            (4, "uint_contents"),
            (5, "uint64_contents"),
        )
    }
    contents[6] = Rule("contents.fp32_contents", max_count=MAX_UNPACKED)
    contents[7] = Rule("contents.fp64_contents", max_count=MAX_UNPACKED)
    contents[8] = Rule("contents.bytes_contents", max_count=max_tensors * max_bytes_elements)
    tensor = {
        3: Rule("inputs.shape", max_count=max_tensors * max_rank, max_bytes=max_tensors * max_rank * 10),
        4: parameters,
        5: Rule("inputs.contents", nested=contents),
    }
    output = {2: parameters}
    return {
        4: parameters,
        5: Rule("inputs", max_count=max_tensors, nested=tensor),
        6: Rule("outputs", max_count=max_tensors, nested=output),
        7: Rule("raw_input_contents", max_count=max_tensors),
    }
