"""Structure-aware fuzzers of the four doors: grammar-built JSON and protobuf requests (hypothesis).

The mutation fuzzers (tests/unit/test_parsers_fuzz.py) change one value of a
valid request at a time; the classes that reached a 500 need structure: JSON
nested thousands deep, shapes numpy cannot hold, numbers past every type,
non-ASCII digits in headers, millions of repeated fields. These strategies
build whole requests from a grammar whose leaves are drawn from those hostile
values, so every generated request is well-formed enough to reach deep code.

Each door runs in-process against a fake data plane (tests/unit/v2_fakes):
the HTTP doors through the real ASGI app (status codes), the gRPC doors
through the real deserializer and servicer. A result is a failure when the
HTTP status is 5xx or the gRPC path raises anything but a core error, or when
one case takes longer than ``FREEZE_S``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from fusionserve.service.config import Settings
from fusionserve.service.errors import FusionServeError
from fusionserve.service.grpc import wire
from fusionserve.service.grpc.handlers import Undecodable, _deserializer
from fusionserve.service.grpc.native_servicer import NativeServicer
from fusionserve.service.grpc.protos import NATIVE, V2
from fusionserve.service.grpc.v2_servicer import V2Servicer
from fusionserve.service.http.app import create_http_app
from fusionserve.service.v2.codec import NUMPY_DTYPES, TensorLimits, serialize_bytes
from tests.unit.v2_fakes import FakeDataPlane

FREEZE_S = 1.0
#: Small count limits so that short generated lists cross them (the bounds' code paths).
SETTINGS = Settings(max_batch_items=6)
LIMITS = TensorLimits.from_settings(SETTINGS)


@dataclass
class Deep:
    """A value nested ``depth`` times in lists or objects, written out as text (json.dumps would recurse)."""

    depth: int
    brace: bool


@dataclass
class Tally:
    cases: int = 0
    slowest_s: float = 0.0
    slowest_case: str = ""
    statuses: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def add(self, status: str, seconds: float, failed: str | None, what: str = "") -> None:
        self.cases += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if seconds > self.slowest_s:
            self.slowest_s, self.slowest_case = seconds, what[:160]
        if failed is not None:
            self.failures.append(failed)
        elif seconds > FREEZE_S:
            self.failures.append(f"froze {seconds:.2f} s: {what[:160]}")
        if self.cases % 5000 == 0:
            print(
                f"  {self.cases} cases, slowest {self.slowest_s * 1000:.0f} ms, "
                f"{len(self.failures)} failures {self.failures[-1:]}",
                flush=True,
            )


def dumps(value: Any) -> str:
    """JSON text of ``value``; Deep nests, non-finite floats (Python's tokens) and huge ints included."""
    if isinstance(value, Deep):
        open_, close = ('{"a":', "}") if value.brace else ("[", "]")
        return open_ * value.depth + "1" + close * value.depth
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # below 4,300 digits here
    return json.dumps(value)


HUGE_INTS = [2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**400, -(10**400), 10**4000]
HOSTILE_FLOATS = [math.inf, -math.inf, math.nan, 1e308, -1e308, 5e-324, 3.5e38]
deep = st.builds(Deep, st.sampled_from([50, 900, 3000, 20000]), st.booleans())
numbers = st.one_of(
    st.integers(-300, 300), st.sampled_from(HUGE_INTS), st.floats(), st.sampled_from(HOSTILE_FLOATS)
)
leaf = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=12))
hostile = st.one_of(
    leaf, deep, st.lists(leaf, max_size=3), st.dictionaries(st.text(max_size=4), leaf, max_size=2)
)
b64 = st.binary(max_size=48).map(lambda b: base64.b64encode(b).decode())
dims = st.one_of(st.integers(0, 4), st.sampled_from([*HUGE_INTS, -1, 0]), numbers)
shapes = st.one_of(
    st.lists(dims, max_size=5),
    st.lists(st.sampled_from([0, 1]), min_size=7, max_size=12),
    hostile,
)
names = st.one_of(st.sampled_from(["image", "audio", "text", "x", ""]), st.text(max_size=6), hostile)
datatypes = st.one_of(st.sampled_from([*NUMPY_DTYPES, "BF16", "fp32"]), hostile)
data = st.one_of(
    st.lists(numbers, max_size=8),
    st.lists(st.text(max_size=6), max_size=4),
    st.lists(st.lists(numbers, max_size=3), max_size=3),
    st.lists(st.text(max_size=4), min_size=7, max_size=9),
    hostile,
)
tensor_parameters = st.dictionaries(
    st.sampled_from(["binary_data_size", "content_type", "binary_data", "classification"]),
    st.one_of(st.just("base64"), st.integers(-2, 64), hostile),
    max_size=2,
)


@st.composite
def tensor(draw: st.DrawFn) -> dict[str, Any]:
    """A tensor whose name, datatype, shape and data mostly agree; then one part may turn hostile."""
    datatype = draw(st.sampled_from(["BYTES", "FP32", "UINT8", "INT64", "BOOL", "FP16"]))
    name = {
        "BYTES": draw(st.sampled_from(["text", "image", "audio"])),
        "FP32": "audio",
        "UINT8": "image",
    }.get(datatype, "x")
    rows = draw(st.integers(1, 3))
    shape = [rows] if datatype == "BYTES" else [rows, *draw(st.lists(st.integers(1, 3), max_size=3))]
    count = math.prod(shape)
    values: list[Any]
    if datatype == "BYTES":
        values = draw(st.lists(st.text(max_size=6), min_size=count, max_size=count))
    else:
        element = {"BOOL": st.booleans(), "UINT8": st.integers(0, 255)}.get(datatype, numbers)
        values = draw(st.lists(element, min_size=count, max_size=count))
    document: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape, "data": values}
    if draw(st.booleans()):
        document["parameters"] = draw(tensor_parameters)
    spoil = draw(st.integers(0, 6))
    if spoil == 1:
        document["shape"] = draw(shapes)
    elif spoil == 2 and values:
        values[draw(st.integers(0, len(values) - 1))] = draw(hostile)
    elif spoil == 3:
        document["data"] = draw(data)
    elif spoil == 4:
        document[draw(st.sampled_from(["name", "datatype", "parameters"]))] = draw(
            st.one_of(names, datatypes, hostile)
        )
    elif spoil == 5:
        del document[draw(st.sampled_from(sorted(document)))]
    return document


request_parameters = st.dictionaries(
    st.sampled_from(["timeout", "top_k", "binary_data_output", "x"]), st.one_of(numbers, hostile), max_size=3
)


@st.composite
def v2_documents(draw: st.DrawFn) -> Any:
    """Mostly a valid request shape (each tensor may be spoiled); sometimes a top-level part turns hostile."""
    document: dict[str, Any] = {"inputs": draw(st.lists(tensor(), min_size=1, max_size=3))}
    if draw(st.integers(0, 3)) == 0:
        document["parameters"] = draw(
            st.fixed_dictionaries({}, optional={"top_k": st.integers(1, 3), "timeout": st.integers(0, 10**6)})
        )
    if draw(st.integers(0, 3)) == 0:
        document["outputs"] = [
            {"name": n}
            for n in draw(st.lists(st.sampled_from(["probabilities", "labels", "scores"]), max_size=2))
        ]
    spoil = draw(st.integers(0, 9))
    if spoil == 1:
        return draw(hostile)
    if spoil == 2:
        document[draw(st.sampled_from(["inputs", "outputs", "parameters", "id"]))] = draw(hostile)
    elif spoil == 3:
        document["parameters"] = draw(st.one_of(request_parameters, hostile))
    elif spoil == 4:
        document["outputs"] = draw(
            st.lists(st.fixed_dictionaries({"name": names}, optional={"parameters": hostile}), max_size=2)
        )
    return document


v2_document = v2_documents()
header_lengths = st.one_of(
    st.none(),
    st.integers(-5, 400).map(str),
    st.sampled_from(["²", "١٢", "12\u00a0", "0x10", "1e3", " 7 ", "9" * 30, "+5"]),
)
item = st.one_of(
    st.fixed_dictionaries({"text": st.text(min_size=1, max_size=8)}, optional={"image": b64}),
    st.fixed_dictionaries(
        {},
        optional={
            "image": st.one_of(b64, hostile),
            "audio": st.one_of(b64, hostile),
            "text": st.one_of(st.text(max_size=8), hostile),
        },
    ),
)


@st.composite
def native_documents(draw: st.DrawFn) -> Any:
    """A single item or an ``items`` batch, mostly valid; then one part may turn hostile."""
    if draw(st.booleans()):
        document: dict[str, Any] = {"items": draw(st.lists(item, min_size=1, max_size=8))}
    else:
        document = draw(item)
    if draw(st.booleans()):
        document["top_k"] = draw(st.integers(1, 5))
    spoil = draw(st.integers(0, 7))
    if spoil == 1:
        return draw(hostile)
    if spoil == 2:
        document["top_k"] = draw(st.one_of(numbers, hostile, st.text(max_size=4)))
    elif spoil == 3:
        document[draw(st.sampled_from(["text", "image", "audio", "items", "x"]))] = draw(hostile)
    return document


native_document = native_documents()


def _app_client() -> httpx.AsyncClient:
    app = create_http_app(FakeDataPlane(), SETTINGS)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fuzz")


T = TypeVar("T")


def _timed(attempt: Callable[[], T]) -> tuple[T, float]:
    """Run one case; while it takes longer than ``FREEZE_S``, run it again (twice at most), keep the fastest.

    On a shared, loaded machine a case can stall for seconds waiting for a
    core; a real freeze (work that grows with the input) is slow both times.
    """
    started = time.perf_counter()
    result = attempt()
    seconds = time.perf_counter() - started
    for _ in range(2):
        if seconds <= FREEZE_S:
            break
        started = time.perf_counter()
        result = attempt()
        seconds = min(seconds, time.perf_counter() - started)
    return result, seconds


def _check_http(tally: Tally, seconds: float, response: httpx.Response, what: str) -> None:
    failed = None
    if response.status_code >= 500:
        failed = f"{what}: {response.status_code} {response.text[:200]}"
    elif "x-request-id" not in response.headers:
        failed = f"{what}: no request id"
    tally.add(str(response.status_code), seconds, failed, what)


def run_http_native(examples: int, seed_value: int) -> Tally:
    """Native JSON predict/embed with grammar-built documents."""
    tally = Tally()
    runner = asyncio.Runner()
    client = _app_client()

    @seed(seed_value)
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(document=native_document, path=st.sampled_from(["predict", "embed"]))
    def case(document: Any, path: str) -> None:
        body = dumps(document).encode()
        response, seconds = _timed(
            lambda: runner.run(
                client.post(
                    f"/v1/models/digits-fusion/{path}",
                    content=body,
                    headers={"content-type": "application/json"},
                )
            )
        )
        _check_http(tally, seconds, response, body[:120].decode(errors="replace"))

    try:
        case()
    finally:
        runner.run(client.aclose())
        runner.close()
    return tally


def run_http_v2(examples: int, seed_value: int) -> Tally:
    """V2 REST infer: JSON documents, optionally with a binary tail and its header length."""
    tally = Tally()
    runner = asyncio.Runner()
    client = _app_client()

    @seed(seed_value)
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(
        document=v2_document,
        tail=st.one_of(
            st.just(b""),
            st.binary(max_size=24),
            st.lists(st.binary(max_size=4), max_size=6).map(serialize_bytes),
        ),
        length=header_lengths,
        model=st.sampled_from(["digits-fusion", "digits-embed"]),
    )
    def case(document: Any, tail: bytes, length: str | None, model: str) -> None:
        header = dumps(document).encode()
        headers = {"content-type": b"application/json"}
        if length is not None:
            headers["inference-header-content-length"] = length.encode()
        response, seconds = _timed(
            lambda: runner.run(
                client.post(f"/v2/models/{model}/infer", content=header + tail, headers=headers)
            )
        )
        _check_http(tally, seconds, response, header[:120].decode(errors="replace"))

    try:
        case()
    finally:
        runner.run(client.aclose())
        runner.close()
    return tally


class _Context:
    """The little of ``grpc.aio.ServicerContext`` the servicers read on the success path."""

    def time_remaining(self) -> float | None:
        return None

    def invocation_metadata(self) -> tuple[()]:
        return ()


def _grpc_case(tally: Tally, runner: asyncio.Runner, call: Any, deserialize: Any, payload: bytes) -> None:
    def attempt() -> tuple[str, str | None]:
        try:
            message = deserialize(payload)
            if isinstance(message, Undecodable):
                return type(message).__name__, None
            runner.run(call(message, _Context()))
        except FusionServeError as exc:
            return type(exc).__name__, None
        except Exception as exc:
            return "INTERNAL", f"{type(exc).__name__}: {exc}"[:300]
        return "OK", None

    (status, failed), seconds = _timed(attempt)
    tally.add(status, seconds, failed, f"{len(payload)} bytes {payload[:60]!r}")


int64s = st.one_of(st.integers(-2, 5), st.sampled_from([2**31, 2**63 - 1, -(2**63)]))
proto_contents = st.fixed_dictionaries(
    {},
    optional={
        "bytes_contents": st.lists(st.binary(max_size=6), max_size=10),
        "fp32_contents": st.lists(st.floats(width=32), max_size=8),
        "int64_contents": st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8),
        "uint_contents": st.lists(st.integers(0, 2**32 - 1), max_size=8),
        "bool_contents": st.lists(st.booleans(), max_size=4),
    },
)
proto_tensor = st.fixed_dictionaries(
    {
        "name": st.one_of(st.sampled_from(["image", "audio", "text", "x"]), st.text(max_size=5)),
        "datatype": st.one_of(st.sampled_from([*NUMPY_DTYPES, "BF16"]), st.text(max_size=4)),
        "shape": st.one_of(st.lists(int64s, max_size=4), st.lists(st.just(1), min_size=7, max_size=12)),
    },
    optional={"contents": proto_contents},
)
proto_parameter = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(lambda v: {"int64_param": v}),
    st.text(max_size=6).map(lambda v: {"string_param": v}),
    st.booleans().map(lambda v: {"bool_param": v}),
    st.floats().map(lambda v: {"double_param": v}),
)


@st.composite
def v2_messages(draw: st.DrawFn) -> bytes:
    tensors = draw(st.lists(proto_tensor, max_size=3))
    message = V2.ModelInferRequest(
        model_name=draw(st.sampled_from(["digits-fusion", "digits-embed", "", "nope"])),
        id=draw(st.text(max_size=6)),
    )
    for spec in tensors:
        tensor = message.inputs.add(name=spec["name"], datatype=spec["datatype"], shape=spec["shape"])
        for key, values in spec.get("contents", {}).items():
            getattr(tensor.contents, key).extend(values)
    if draw(st.booleans()):
        for _ in tensors[: draw(st.integers(0, len(tensors) + 1))]:
            elements = draw(st.lists(st.binary(max_size=8), max_size=4))
            message.raw_input_contents.append(
                draw(st.one_of(st.just(serialize_bytes(elements)), st.binary(max_size=16)))
            )
    for key, value in draw(
        st.dictionaries(st.sampled_from(["timeout", "top_k", "x"]), proto_parameter, max_size=2)
    ).items():
        for attr, v in value.items():
            setattr(message.parameters[key], attr, v)
    for name in draw(st.lists(st.sampled_from(["probabilities", "labels", "scores", "x"]), max_size=2)):
        message.outputs.add(name=name)
    payload: bytes = message.SerializeToString()
    return _mutated(draw, payload)


def _mutated(draw: st.DrawFn, payload: bytes) -> bytes:
    """Sometimes repeat a field many times or cut the message: the wire-level classes."""
    choice = draw(st.integers(0, 9))
    if choice == 0 and payload:
        return payload * draw(st.integers(2, 40))  # every field repeated: counts, merges
    if choice == 1 and payload:
        return payload[: draw(st.integers(0, len(payload)))]
    return payload


@st.composite
def native_messages(draw: st.DrawFn) -> bytes:
    items = draw(st.integers(0, 9))
    message = NATIVE.PredictRequest(
        model=draw(st.sampled_from(["digits-fusion", "digits-embed", "", "nope"])),
        top_k=draw(st.one_of(st.integers(0, 10), st.just(2**32 - 1))),
        request_id=draw(st.text(max_size=6)),
    )
    for _ in range(items):
        entry = message.items.add()
        if draw(st.booleans()):
            entry.text = draw(st.text(max_size=6))
        if draw(st.booleans()):
            entry.image = draw(st.binary(max_size=8))
    return _mutated(draw, message.SerializeToString())


def run_grpc_v2(examples: int, seed_value: int) -> Tally:
    tally = Tally()
    runner = asyncio.Runner()
    servicer = V2Servicer(FakeDataPlane(), LIMITS)  # type: ignore[arg-type]
    schema = wire.v2_infer_schema(
        max_tensors=LIMITS.max_tensors,
        max_rank=LIMITS.max_rank,
        max_bytes_elements=LIMITS.max_bytes_elements,
        max_elements=LIMITS.max_elements,
    )
    deserialize = _deserializer(V2.ModelInferRequest, schema)

    @seed(seed_value)
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(payload=v2_messages())
    def case(payload: bytes) -> None:
        servicer.dataplane.calls.clear()  # type: ignore[attr-defined]
        _grpc_case(tally, runner, servicer._infer, deserialize, payload)

    try:
        case()
    finally:
        runner.close()
    return tally


def run_grpc_native(examples: int, seed_value: int) -> Tally:
    tally = Tally()
    runner = asyncio.Runner()
    servicer = NativeServicer(FakeDataPlane())  # type: ignore[arg-type]
    deserialize = _deserializer(NATIVE.PredictRequest, wire.native_schema(SETTINGS.max_batch_items))

    @seed(seed_value)
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(payload=native_messages())
    def case(payload: bytes) -> None:
        servicer.dataplane.calls.clear()  # type: ignore[attr-defined]
        _grpc_case(tally, runner, servicer._predict, deserialize, payload)

    try:
        case()
    finally:
        runner.close()
    return tally


DOORS = {
    "native-http": run_http_native,
    "v2-rest": run_http_v2,
    "v2-grpc": run_grpc_v2,
    "native-grpc": run_grpc_native,
}
