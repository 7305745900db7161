"""Class 2: nothing a client sends is a 500.

Against the real server: JSON nested thousands deep on every JSON door,
V2 shapes that pass a naive check but break numpy, numbers past every type,
non-ASCII digits in a length header, non-finite ``top_k``. Each is a 4xx
naming what was wrong, with a request id, counted as a client error, with no
traceback in the log, while ``/health/live`` keeps answering. Then the
structure-aware fuzzers (tests/security/fuzz_doors.py): a seeded short run
here, 100,000 cases per door in the slow run.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import httpx
import pytest

from fusionserve.service.grpc import protos
from fusionserve.service.grpc.protos import NATIVE, V2
from tests.conftest import RunningServer
from tests.security.hostile import client_errors, tracebacks, watched

CLASSIFIER = "digits-fusion"
V2_INFER = f"/v2/models/{CLASSIFIER}/infer"
PREDICT = f"/v1/models/{CLASSIFIER}/predict"
EMBED = "/v1/models/digits-embed/embed"


def _deep(depth: int, brace: bool = False) -> str:
    return ('{"a":' * depth + "1" + "}" * depth) if brace else ("[" * depth + "1" + "]" * depth)


def _v2(tensor: dict[str, Any], **top: Any) -> bytes:
    return json.dumps({"inputs": [tensor], **top}).encode()


def _text_tensor(**changes: Any) -> dict[str, Any]:
    return {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["seven"], **changes}


#: (label, path, body, extra headers, the words the error must name)
HTTP_CASES: list[tuple[str, str, bytes, dict[str, str], str]] = [
    ("native deep list", PREDICT, f'{{"text": {_deep(3000)}}}'.encode(), {}, "nested too deeply"),
    ("native deep object", EMBED, f'{{"text": {_deep(3000, True)}}}'.encode(), {}, "nested too deeply"),
    ("native deep items", PREDICT, f'{{"items": [{_deep(3000)}]}}'.encode(), {}, "nested too deeply"),
    ("v2 deep inputs", V2_INFER, f'{{"inputs": [{_deep(3000, True)}]}}'.encode(), {}, "nested too deeply"),
    ("v2 deep parameters", V2_INFER, f'{{"inputs": [], "parameters": {_deep(5000)}}}'.encode(), {}, "nested"),
    ("v2 deep data", V2_INFER, _v2(_text_tensor()).replace(b'["seven"]', _deep(3000).encode()), {}, "nested"),
    (
        "v2 shape [0, 2^63-1]",
        V2_INFER,
        _v2({"name": "audio", "datatype": "FP32", "shape": [0, 2**63 - 1], "data": []}),
        {},
        "audio",
    ),
    (
        "v2 shape 65 dims",
        V2_INFER,
        _v2({"name": "audio", "datatype": "FP32", "shape": [1] * 65, "data": [1.0]}),
        {},
        "audio",
    ),
    (
        "v2 shape 10^400",
        V2_INFER,
        _v2({"name": "audio", "datatype": "FP32", "shape": [1, 10**400], "data": [1.0]}),
        {},
        "audio",
    ),
    (
        "v2 400-digit FP32",
        V2_INFER,
        _v2({"name": "audio", "datatype": "FP32", "shape": [1, 2], "data": [10**400, 1]}),
        {},
        "audio",
    ),
    (
        "v2 4400-digit FP32",
        V2_INFER,
        _v2({"name": "audio", "datatype": "FP32", "shape": [1, 1], "data": [1]}).replace(
            b"[1]}", b"[" + b"9" * 4400 + b"]}"
        ),
        {},
        "JSON",
    ),
    ("v2 timeout 10^400", V2_INFER, _v2(_text_tensor(), parameters={"timeout": 10**400}), {}, "timeout"),
    ("v2 top_k 10^400", V2_INFER, _v2(_text_tensor(), parameters={"top_k": 10**400}), {}, "top_k"),
    (
        "v2 Infinity",
        V2_INFER,
        _v2({"name": "audio", "datatype": "FP32", "shape": [1, 1], "data": [1]}).replace(
            b"[1]}", b"[Infinity]}"
        ),
        {},
        "Infinity",
    ),
    (
        "v2 header length ²",
        V2_INFER,
        _v2(_text_tensor()),
        {"inference-header-content-length": "²"},
        "Inference-Header-Content-Length",
    ),
    (
        "v2 header length ١٢",
        V2_INFER,
        _v2(_text_tensor()),
        {"inference-header-content-length": "١٢"},
        "Inference-Header-Content-Length",
    ),
    ("native top_k 1e400", PREDICT, b'{"text": "seven", "top_k": 1e400}', {}, "top_k"),
    ("native top_k Infinity", PREDICT, b'{"text": "seven", "top_k": Infinity}', {}, "top_k"),
    ("native top_k -Infinity", PREDICT, b'{"text": "seven", "top_k": -Infinity}', {}, "top_k"),
    ("native top_k NaN", PREDICT, b'{"text": "seven", "top_k": NaN}', {}, "top_k"),
    (
        "native top_k 10^400",
        PREDICT,
        b'{"text": "seven", "top_k": ' + str(10**400).encode() + b"}",
        {},
        "top_k",
    ),
    ("native 4400 digits", PREDICT, b'{"text": "seven", "top_k": ' + b"9" * 4400 + b"}", {}, "JSON"),
]


@pytest.mark.parametrize(
    ("label", "path", "body", "headers", "named"), HTTP_CASES, ids=[c[0] for c in HTTP_CASES]
)
def test_hostile_json_is_a_4xx_naming_the_field(
    running_server: RunningServer, label: str, path: str, body: bytes, headers: dict[str, str], named: str
) -> None:
    before_errors, before_tracebacks = client_errors(running_server), tracebacks(running_server)
    with watched(running_server, label), httpx.Client(base_url=running_server.http_url, timeout=30) as client:
        encoded = {k: v.encode() for k, v in {"content-type": "application/json", **headers}.items()}
        response = client.post(path, content=body, headers=encoded)
    assert response.status_code in (400, 413), (label, response.status_code, response.text[:300])
    message = json.dumps(response.json())
    assert named.lower() in message.lower(), (label, message[:300])
    assert response.headers.get("x-request-id"), label
    if path.startswith("/v1"):
        assert response.json()["request_id"] == response.headers["x-request-id"]
    assert client_errors(running_server) >= before_errors + 1, label
    assert tracebacks(running_server) == before_tracebacks, running_server.log()[-2000:]


def test_repository_doors_refuse_deep_json(running_server: RunningServer) -> None:
    """The repository JSON doors: deep JSON is a 4xx (or the door is closed), never a 500."""
    with httpx.Client(base_url=running_server.http_url, timeout=30) as client:
        for path in ("/v2/repository/index", f"/v2/repository/models/{CLASSIFIER}/unload"):
            response = client.post(path, content=_deep(3000).encode())
            assert 400 <= response.status_code < 500, (path, response.status_code, response.text[:200])


def _grpc_call(server: RunningServer, service: str, method: str, message: Any) -> grpc.RpcError | Any:
    with grpc.insecure_channel(server.grpc_target) as channel:
        response_class = type(message)  # only the status matters; the answer is not parsed
        call = channel.unary_unary(
            f"/{service}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_class.FromString,
        )
        try:
            return call(message, timeout=30)
        except grpc.RpcError as exc:
            return exc


def _v2_message(shape: list[int], datatype: str = "FP32", raw: bytes = b"") -> Any:
    message = V2.ModelInferRequest(model_name=CLASSIFIER)
    message.inputs.add(name="audio", datatype=datatype, shape=shape)
    message.raw_input_contents.append(raw)
    return message


GRPC_CASES = [
    ("grpc shape [0, 2^63-1]", _v2_message([0, 2**63 - 1])),
    ("grpc shape 65 dims", _v2_message([1] * 65, raw=b"\0\0\0\0")),
    ("grpc shape [2^62, 4]", _v2_message([2**62, 4])),
    ("grpc timeout 2^63-1", None),
]


@pytest.mark.parametrize(("label", "message"), GRPC_CASES, ids=[c[0] for c in GRPC_CASES])
def test_hostile_grpc_is_invalid_argument(running_server: RunningServer, label: str, message: Any) -> None:
    if message is None:
        message = V2.ModelInferRequest(model_name=CLASSIFIER)
        tensor = message.inputs.add(name="text", datatype="BYTES", shape=[1])
        tensor.contents.bytes_contents.append(b"seven")
        message.parameters["timeout"].int64_param = 2**63 - 1
    before_errors, before_tracebacks = client_errors(running_server), tracebacks(running_server)
    with watched(running_server, label):
        outcome = _grpc_call(running_server, protos.V2_SERVICE, "ModelInfer", message)
    assert isinstance(outcome, grpc.RpcError), label
    assert outcome.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), (
        label,
        outcome.code(),
        outcome.details(),
    )
    assert "audio" in outcome.details() or "timeout" in outcome.details(), outcome.details()
    assert dict(outcome.trailing_metadata() or ()).get("x-request-id"), label
    assert client_errors(running_server) >= before_errors + 1, label
    assert tracebacks(running_server) == before_tracebacks


def test_native_grpc_top_k_past_the_limit(running_server: RunningServer) -> None:
    message = NATIVE.PredictRequest(model=CLASSIFIER, items=[NATIVE.Item(text="seven")], top_k=2**32 - 1)
    outcome = _grpc_call(running_server, protos.NATIVE_SERVICE, "Predict", message)
    assert isinstance(outcome, grpc.RpcError) and outcome.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "top_k" in outcome.details()


#: The doors of tests/security/fuzz_doors.py (imported inside the tests: it needs the
#: bounded parsers, and this file must collect on the code before them too).
DOORS = ["native-grpc", "native-http", "v2-grpc", "v2-rest"]


@pytest.mark.parametrize("door", DOORS)
def test_structure_aware_fuzz_short(door: str) -> None:
    """A seeded few hundred grammar-built requests per door: no 5xx, no freeze."""
    from tests.security import fuzz_doors

    tally = fuzz_doors.DOORS[door](150, 15)
    print(f"{door}: {tally.cases} cases, slowest {tally.slowest_s * 1000:.1f} ms, {tally.statuses}")
    assert tally.cases >= 100
    assert not tally.failures, tally.failures[:5]


@pytest.mark.slow
@pytest.mark.timeout(7200)
@pytest.mark.parametrize("door", DOORS)
def test_structure_aware_fuzz_long(door: str) -> None:
    """100,000 grammar-built requests per door: 0 5xx, 0 cases slower than 1 s."""
    from tests.security import fuzz_doors

    tally = fuzz_doors.DOORS[door](100_000, 20261203)
    print(f"{door}: {tally.cases} cases, slowest {tally.slowest_s * 1000:.1f} ms, {tally.statuses}")
    assert tally.cases >= 100_000
    assert not tally.failures, tally.failures[:5]
