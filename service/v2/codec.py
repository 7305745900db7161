"""V2 tensors on the wire: JSON data, raw little-endian bytes, the binary tensor extension.

Pure functions from bytes/JSON to :class:`Tensor` and back, shared by the
REST and gRPC doors. Every malformed input raises
:class:`~fusionserve.service.errors.InvalidInput` naming the tensor and what is wrong.

``BYTES`` tensors are object arrays of ``bytes``; serialised, each element is
a 4-byte little-endian length followed by its bytes.
"""

from __future__ import annotations

import itertools
import json
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fusionserve.service import jsonbody
from fusionserve.service.errors import InvalidInput, LimitExceeded, brief

if TYPE_CHECKING:
    from fusionserve.service.config import Settings

#: V2 datatype -> numpy dtype (little-endian). BF16 has no numpy type and is refused.
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
BINARY_SIZE = "binary_data_size"
HEADER_LENGTH = "Inference-Header-Content-Length"
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class TensorLimits:
    """Bounds every tensor meets before anything is allocated for it.

    ``max_bytes_elements`` bounds ``BYTES`` tensors separately: each element
    becomes a Python object, and every ``BYTES`` input here is one element
    per row (so the doors pass ``max_batch_items``).
    """

    max_rank: int = 8
    max_elements: int = 64 * 1024 * 1024
    max_bytes: int = 256 * 1024 * 1024
    max_bytes_elements: int = 64
    max_tensors: int = 64

    @classmethod
    def from_settings(cls, settings: Settings) -> TensorLimits:
        return cls(
            max_rank=settings.max_tensor_rank,
            max_elements=settings.max_tensor_elements,
            max_bytes=settings.max_tensor_bytes,
            max_bytes_elements=settings.max_batch_items,
        )


DEFAULT_LIMITS = TensorLimits()
#: Longest tensor/output name accepted (names echo into messages and logs).
MAX_NAME_LENGTH = 256


@dataclass
class Tensor:
    """One named tensor; ``data`` already has ``shape`` (BYTES: object array of bytes)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestedOutput:
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferRequest:
    """A V2 inference request, whichever door it came through."""

    inputs: list[Tensor]
    outputs: list[RequestedOutput] = field(default_factory=list)
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


# -- shapes and datatypes ---------------------------------------------------


def check_name(what: str, name: object) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{what} needs a string 'name'")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(f"{what}: name of {len(name)} characters; the limit is {MAX_NAME_LENGTH}")
    return name


def check_datatype(name: str, datatype: object) -> str:
    if not isinstance(datatype, str) or datatype not in NUMPY_DTYPES:
        known = ", ".join(NUMPY_DTYPES)
        raise InvalidInput(
            f"tensor {name!r}: unsupported datatype {brief(datatype)}; expected one of {known}"
        )
    return datatype


def check_shape(
    name: str, shape: object, datatype: str | None = None, limits: TensorLimits = DEFAULT_LIMITS
) -> tuple[int, ...]:
    """The shape as a tuple, bounded in rank, element count and byte size.

    A zero dimension does not excuse the others: ``[0, 2**63-1]`` holds no
    element but numpy cannot represent it, so every dimension counts (as 1
    when zero) toward the element bound.
    """
    if not isinstance(shape, list | tuple):
        raise InvalidInput(
            f"tensor {name!r}: shape must be a list of non-negative integers, got {brief(shape)}"
        )
    if len(shape) > limits.max_rank:
        raise InvalidInput(
            f"tensor {name!r}: shape has {len(shape)} dimensions; the limit is {limits.max_rank}"
        )
    for dim in shape:
        if type(dim) is not int or dim < 0:
            raise InvalidInput(
                f"tensor {name!r}: shape must be a list of non-negative integers, got {brief(shape)}"
            )
    bound = limits.max_bytes_elements if datatype == "BYTES" else limits.max_elements
    spread = 1
    for dim in shape:
        spread *= max(dim, 1)
        if spread > bound:
            what = "BYTES elements" if datatype == "BYTES" else "elements"
            raise LimitExceeded(
                f"tensor {name!r}: shape {brief(list(shape))} holds more than {bound} {what}",
                field=name,
            )
    if datatype is not None and datatype != "BYTES":
        size = element_count(shape) * NUMPY_DTYPES[datatype].itemsize
        if size > limits.max_bytes:
            raise LimitExceeded(
                f"tensor {name!r}: {datatype} shape {list(shape)} is {size} bytes; "
                f"the limit is {limits.max_bytes}",
                field=name,
            )
    return tuple(shape)


def check_tensor(
    name: str, datatype: object, shape: object, limits: TensorLimits = DEFAULT_LIMITS
) -> tuple[str, tuple[int, ...]]:
    """Datatype and bounded shape of one tensor, checked before its data is touched."""
    checked = check_datatype(name, datatype)
    return checked, check_shape(name, shape, checked, limits)


def check_int_range(name: str, datatype: str, low: int, high: int) -> None:
    """Integer values (their least and greatest) must fit the datatype, not wrap around."""
    info = np.iinfo(NUMPY_DTYPES[datatype])
    if low < info.min or high > info.max:
        raise InvalidInput(f"tensor {name!r}: a value lies outside {datatype} range {info.min}..{info.max}")


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


# -- BYTES elements -----------------------------------------------------------


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytearray | memoryview | np.bytes_):
        return bytes(value)
    return str(value).encode("utf-8")


def serialize_bytes(elements: Iterable[object]) -> bytes:
    """Length-prefixed concatenation of the elements (str are UTF-8 encoded)."""
    parts: list[bytes] = []
    for element in elements:
        data = _as_bytes(element)
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes(name: str, buffer: bytes | memoryview, limit: int | None = None) -> list[bytes]:
    """Split a length-prefixed BYTES buffer; a truncated element is an error, not a guess.

    With ``limit``, stops at the element past it (InvalidInput): a buffer of
    millions of empty elements is refused without building them.
    """
    view = memoryview(buffer)
    if len(view) >= 4 and _LENGTH.unpack_from(view)[0] == len(view) - 4:  # the common single element
        return [bytes(view[4:])]
    elements: list[bytes] = []
    offset = 0
    while offset < len(view):
        if limit is not None and len(elements) == limit:
            raise InvalidInput(
                f"tensor {name!r}: the BYTES data holds more than the {limit} elements its shape needs"
            )
        if offset + 4 > len(view):
            raise InvalidInput(f"tensor {name!r}: truncated BYTES element length at byte {offset}")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInput(
                f"tensor {name!r}: BYTES element {len(elements)} declares {length} bytes "
                f"but only {len(view) - offset} remain"
            )
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    return elements


def object_array(elements: Sequence[bytes], shape: tuple[int, ...]) -> np.ndarray:
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    return array.reshape(shape)


# -- raw little-endian contents --------------------------------------------


def from_raw(name: str, datatype: str, shape: tuple[int, ...], raw: bytes | memoryview) -> np.ndarray:
    """A tensor from its raw bytes (binary extension part or gRPC raw contents)."""
    count = element_count(shape)
    if datatype == "BYTES":
        elements = deserialize_bytes(name, raw, count)
        if len(elements) != count:
            raise InvalidInput(
                f"tensor {name!r}: shape {list(shape)} needs {count} BYTES elements, got {len(elements)}"
            )
        return object_array(elements, shape)
    dtype = NUMPY_DTYPES[datatype]
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"tensor {name!r}: {datatype} shape {list(shape)} needs {expected} bytes, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def to_raw(tensor: Tensor) -> bytes:
    if tensor.datatype == "BYTES":
        return serialize_bytes(tensor.data.reshape(-1))
    return np.ascontiguousarray(tensor.data, dtype=NUMPY_DTYPES[tensor.datatype]).tobytes()


# -- JSON data ----------------------------------------------------------------


def _flatten(name: str, data: object) -> list[Any]:
    """Row-major elements of flat or nested ``data``.

    Level by level at C speed while each level is all lists (a regular nested
    array, the common case); a level mixing lists and values falls back to
    the element-wise walk.
    """
    if not isinstance(data, list):
        return [data]
    level: list[Any] = data
    while True:
        kinds = set(map(type, level))
        if list not in kinds:
            return level
        if kinds != {list}:
            break
        level = list(itertools.chain.from_iterable(level))
    flat: list[Any] = []
    stack: list[Any] = [iter(level)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _only(flat: list[Any], allowed: set[type]) -> bool:
    """Every element's exact type is allowed (``bool`` is not ``int`` here, as JSON means it).

    One C-speed pass (``map(type)``) instead of an ``isinstance`` generator: a
    JSON tensor of a million numbers is checked in milliseconds, on the event loop.
    """
    return set(map(type, flat)) <= allowed


def _numbers(name: str, datatype: str, flat: list[Any]) -> np.ndarray:
    dtype = NUMPY_DTYPES[datatype]
    if dtype.kind == "b":
        if not _only(flat, {bool}):
            raise InvalidInput(f"tensor {name!r}: BOOL data must be true/false")
        return np.asarray(flat, dtype=dtype)
    if dtype.kind in "iu":
        if not _only(flat, {int}):
            raise InvalidInput(f"tensor {name!r}: {datatype} data must be integers")
        if flat:
            check_int_range(name, datatype, min(flat), max(flat))
        return np.asarray(flat, dtype=dtype)
    if not _only(flat, {int, float}):
        raise InvalidInput(f"tensor {name!r}: {datatype} data must be numbers")
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            array = np.asarray(flat, dtype=dtype)
    except OverflowError as exc:  # an integer past any float (e.g. 400 digits)
        raise InvalidInput(
            f"tensor {name!r}: {datatype} data must be finite numbers within the type's range"
        ) from exc
    # JSON numbers are finite: an infinity here is a value past the type's
    # range (or Python's non-standard NaN/Infinity tokens), not a real input.
    if not np.isfinite(array).all():
        raise InvalidInput(f"tensor {name!r}: {datatype} data must be finite numbers within the type's range")
    return array


def from_json_data(name: str, datatype: str, shape: tuple[int, ...], data: object) -> np.ndarray:
    """A tensor from JSON ``data`` (flat or nested, row-major). BYTES elements are UTF-8 strings."""
    flat = _flatten(name, data)
    count = element_count(shape)
    if len(flat) != count:
        raise InvalidInput(
            f"tensor {name!r}: shape {list(shape)} needs {count} elements, data has {len(flat)}"
        )
    if datatype == "BYTES":
        if not _only(flat, {str}):
            raise InvalidInput(f"tensor {name!r}: BYTES data must be strings")
        return object_array([v.encode("utf-8") for v in flat], shape)
    return _numbers(name, datatype, flat).reshape(shape)


def to_json_data(tensor: Tensor) -> list[Any]:
    flat = tensor.data.reshape(-1)
    if tensor.datatype == "BYTES":
        return [_as_bytes(v).decode("utf-8", errors="replace") for v in flat]
    return flat.tolist()


# -- REST bodies (JSON, optionally followed by binary parts) ------------------


def _mapping(name: str, value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{name} must be a JSON object")
    return value


def parse_header_length(value: str | None, body_length: int) -> int | None:
    """The ``Inference-Header-Content-Length`` value, checked against the body."""
    if value is None:
        return None
    digits = value.strip()
    # ASCII digits only: str.isdigit() also says yes to "²" and other scripts' digits.
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 20:
        raise InvalidInput(f"{HEADER_LENGTH} must be a non-negative integer, got {brief(value)}")
    length = int(digits)
    if length == 0 or length > body_length:
        raise InvalidInput(f"{HEADER_LENGTH}={length} does not fit a body of {body_length} bytes")
    return length


def _input_tensor(
    raw: object, index: int, binary: memoryview, cursor: int, limits: TensorLimits
) -> tuple[Tensor, int]:
    if not isinstance(raw, dict):
        raise InvalidInput(f"inputs[{index}] must be a JSON object")
    name = check_name(f"inputs[{index}]", raw.get("name"))
    datatype, shape = check_tensor(name, raw.get("datatype"), raw.get("shape"), limits)
    parameters = _mapping(f"inputs[{index}].parameters", raw.get("parameters"))
    size = parameters.get(BINARY_SIZE)
    if size is None:
        if "data" not in raw:
            raise InvalidInput(f"tensor {name!r} has neither 'data' nor parameters.{BINARY_SIZE}")
        return Tensor(
            name, datatype, shape, from_json_data(name, datatype, shape, raw["data"]), parameters
        ), cursor
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput(f"tensor {name!r}: {BINARY_SIZE} must be a non-negative integer")
    if cursor + size > len(binary):
        raise InvalidInput(
            f"tensor {name!r}: {BINARY_SIZE}={brief(size)} runs past the end of the binary data "
            f"({len(binary) - cursor} bytes left)"
        )
    data = from_raw(name, datatype, shape, binary[cursor : cursor + size])
    return Tensor(name, datatype, shape, data, parameters), cursor + size


def parse_infer_request(
    body: bytes, header_length: int | None, limits: TensorLimits = DEFAULT_LIMITS
) -> InferRequest:
    """A REST infer body: JSON, or JSON header + binary parts when ``header_length`` is given."""
    header = body if header_length is None else body[:header_length]
    binary = memoryview(body)[len(header) :]
    jsonbody.check_structure(header)
    document = jsonbody.load_object(
        header, list_limits={"inputs": limits.max_tensors, "outputs": limits.max_tensors}
    )
    if not isinstance(document, dict):
        raise InvalidInput("request body must be a JSON object")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list):
        raise InvalidInput("request needs an 'inputs' list")
    inputs: list[Tensor] = []
    cursor = 0
    for index, raw in enumerate(raw_inputs):
        tensor, cursor = _input_tensor(raw, index, binary, cursor, limits)
        inputs.append(tensor)
    if cursor != len(binary):
        raise InvalidInput(f"{len(binary) - cursor} bytes of binary data are not claimed by any input")
    outputs = []
    raw_outputs = document.get("outputs") or []
    if not isinstance(raw_outputs, list):
        raise InvalidInput("'outputs' must be a list")
    for index, raw in enumerate(raw_outputs):
        if not isinstance(raw, dict):
            raise InvalidInput(f"outputs[{index}] needs a string 'name'")
        check_name(f"outputs[{index}]", raw.get("name"))
        outputs.append(
            RequestedOutput(raw["name"], _mapping(f"outputs[{index}].parameters", raw.get("parameters")))
        )
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    return InferRequest(inputs, outputs, request_id, _mapping("parameters", document.get("parameters")))


def encode_infer_response(
    head: dict[str, Any], outputs: Sequence[Tensor], binary: set[str]
) -> tuple[bytes, int | None]:
    """The REST answer: JSON, then the raw bytes of the outputs named in ``binary``.

    Returns the body and, when any output is binary, the JSON header's length
    (for ``Inference-Header-Content-Length``).
    """
    parts: list[bytes] = []
    described = []
    for tensor in outputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        parameters = dict(tensor.parameters)
        if tensor.name in binary:
            raw = to_raw(tensor)
            parameters[BINARY_SIZE] = len(raw)
            parts.append(raw)
        else:
            entry["data"] = to_json_data(tensor)
        if parameters:
            entry["parameters"] = parameters
        described.append(entry)
    header = json.dumps({**head, "outputs": described}, separators=(",", ":")).encode()
    if not parts:
        return header, None
    return header + b"".join(parts), len(header)
