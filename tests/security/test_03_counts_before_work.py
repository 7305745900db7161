"""Class 3: counts are bounded before any work is done for them.

64 MiB requests of tens of millions of empty items, on every door: the
count is read from the wire (protobuf tags, JSON elements parsed one at a
time, a tensor's shape) and the request is refused at the first item past
the limit, without building rows. Printed: the time to the answer, the
slowest ``/health/live`` meanwhile, the server's RSS before and after.
"""

from __future__ import annotations

import json
import time

import grpc
import httpx
import pytest

from fusionserve.service.grpc import protos
from fusionserve.service.grpc.protos import V2
from tests.conftest import RunningServer
from tests.security.hostile import client_errors, watched

CLASSIFIER = "digits-fusion"
ITEMS = 32_000_000  # 64,000,000 bytes of empty protobuf items: just under the 64 MiB message limit


def _raw_call(server: RunningServer, method: str, payload: bytes) -> grpc.RpcError | bytes:
    options = [("grpc.max_send_message_length", 80 * 2**20)]
    with grpc.insecure_channel(server.grpc_target, options=options) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            return call(payload, timeout=120)  # type: ignore[no-any-return]
        except grpc.RpcError as exc:
            return exc


def _native_predict(items: int) -> bytes:
    model = CLASSIFIER.encode()
    return b"\x0a" + bytes([len(model)]) + model + b"\x1a\x00" * items


def _v2_bytes_tensor(rows: int, raw: bytes | None, typed: int = 0) -> bytes:
    message = V2.ModelInferRequest(model_name=CLASSIFIER)
    tensor = message.inputs.add(name="text", datatype="BYTES", shape=[rows])
    if raw is not None:
        message.raw_input_contents.append(raw)
    payload: bytes = message.SerializeToString()
    if typed:  # InferInputTensor.contents.bytes_contents, `typed` empty entries, spliced in by hand
        del tensor
        contents = b"\x42\x00" * typed  # field 8, length 0
        tensor_bytes = (
            b"\x0a\x04text\x12\x05BYTES\x1a"
            + bytes([len(_varint(rows))])
            + _varint(rows)
            + b"\x2a"
            + _varint(len(contents))
            + contents
        )
        model = CLASSIFIER.encode()
        payload = b"\x0a" + bytes([len(model)]) + model + b"\x2a" + _varint(len(tensor_bytes)) + tensor_bytes
    return payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


GRPC_CASES = [
    (
        "native Predict of 32 M empty items",
        f"/{protos.NATIVE_SERVICE}/Predict",
        lambda: _native_predict(ITEMS),
    ),
    ("native Embed of 32 M empty items", f"/{protos.NATIVE_SERVICE}/Embed", lambda: _native_predict(ITEMS)),
    (
        "V2 BYTES shape [16000000], raw",
        f"/{protos.V2_SERVICE}/ModelInfer",
        lambda: _v2_bytes_tensor(16_000_000, b"\0" * 64_000_000),
    ),
    (
        "V2 BYTES shape [1], 16 M raw elements",
        f"/{protos.V2_SERVICE}/ModelInfer",
        lambda: _v2_bytes_tensor(1, b"\0" * 64_000_000),
    ),
    (
        "V2 typed bytes_contents x 30 M",
        f"/{protos.V2_SERVICE}/ModelInfer",
        lambda: _v2_bytes_tensor(1, None, typed=30_000_000),
    ),
]


@pytest.mark.parametrize(("label", "method", "build"), GRPC_CASES, ids=[c[0] for c in GRPC_CASES])
def test_grpc_counts_refused_from_the_wire(
    running_server: RunningServer, label: str, method: str, build
) -> None:  # type: ignore[no-untyped-def]
    payload = build()
    assert len(payload) < 64 * 2**20
    before = client_errors(running_server)
    with watched(running_server, label):
        started = time.perf_counter()
        outcome = _raw_call(running_server, method, payload)
        elapsed = time.perf_counter() - started
    print(f"{label}: {len(payload) / 2**20:.1f} MiB answered in {elapsed:.2f} s")
    del payload
    assert isinstance(outcome, grpc.RpcError), label
    assert outcome.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT), (
        outcome.code(),
        outcome.details(),
    )
    assert any(word in outcome.details() for word in ("items", "text", "bytes_contents")), outcome.details()
    assert client_errors(running_server) >= before + 1


def _http(server: RunningServer, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    with httpx.Client(base_url=server.http_url, timeout=120) as client:
        return client.post(path, content=body, headers=headers)


def test_json_items_refused_while_parsing(running_server: RunningServer) -> None:
    body = b'{"items": [' + b"{}," * 21_000_000 + b"{}]}"
    before = client_errors(running_server)
    with watched(running_server, "native JSON of 21 M empty items"):
        started = time.perf_counter()
        response = _http(
            running_server, f"/v1/models/{CLASSIFIER}/predict", body, {"content-type": "application/json"}
        )
        print(f"native JSON {len(body) / 2**20:.1f} MiB answered in {time.perf_counter() - started:.2f} s")
    assert response.status_code == 413, response.text[:300]
    message = response.json()["error"]["message"]
    assert "items" in message or "objects" in message, message
    assert client_errors(running_server) >= before + 1


def test_v2_rest_bytes_tensor_refused_from_its_shape(running_server: RunningServer) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [16_000_000],
                    "parameters": {"binary_data_size": 64_000_000},
                }
            ]
        }
    ).encode()
    body = header + b"\0" * 64_000_000
    with watched(running_server, "V2 REST BYTES [16000000], binary"):
        response = _http(
            running_server,
            f"/v2/models/{CLASSIFIER}/infer",
            body,
            {"content-type": "application/octet-stream", "inference-header-content-length": str(len(header))},
        )
    assert response.status_code == 413, response.text[:300]
    assert "text" in response.json()["error"]


def test_v2_rest_json_strings_refused_before_parsing(running_server: RunningServer) -> None:
    strings = 20_000_000
    body = (
        b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [%d], "data": [' % strings
        + b'"",' * (strings - 1)
        + b'""]}]}'
    )
    with watched(running_server, "V2 REST JSON of 20 M strings"):
        response = _http(
            running_server, f"/v2/models/{CLASSIFIER}/infer", body, {"content-type": "application/json"}
        )
    assert response.status_code == 413, response.text[:300]
    assert "strings" in response.json()["error"]


def test_v2_rest_json_numbers_refused_before_parsing(running_server: RunningServer) -> None:
    """16 M JSON numbers took seconds to parse on the event loop: refused from a byte count."""
    numbers = 16_000_000
    body = (
        b'{"inputs": [{"name": "audio", "datatype": "FP32", "shape": [1, %d], "data": [' % numbers
        + b"0.5," * (numbers - 1)
        + b"0.5]}]}"
    )
    with watched(running_server, "V2 REST JSON of 16 M numbers"):
        response = _http(
            running_server, f"/v2/models/{CLASSIFIER}/infer", body, {"content-type": "application/json"}
        )
    assert response.status_code == 413, response.text[:300]
    assert "binary" in response.json()["error"]
