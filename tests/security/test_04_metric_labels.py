"""Class 4: clients cannot inflate ``/metrics``.

Requests for model names the server does not know are counted under one
label value, ``model="_unknown"``, on all four doors; no label value exceeds
128 characters, whatever a client sends.
"""

from __future__ import annotations

import re
import uuid

import grpc
import httpx

from fusionserve.service.grpc.generated.fusionserve.v1 import fusionserve_pb2 as pb
from fusionserve.service.grpc.generated.fusionserve.v1 import fusionserve_pb2_grpc as pb_grpc
from fusionserve.service.grpc.protos import V2
from tests.conftest import RunningServer

#: fusionserve.service.metrics.MAX_LABEL_CHARS (spelled out so this file imports on older code too).
MAX_LABEL_CHARS = 128
_LABEL_VALUE = re.compile(r'="((?:[^"\\]|\\.)*)"')


def _series(exposition: str, metric: str) -> list[dict[str, str]]:
    """The label sets of one metric's samples."""
    found = []
    for line in exposition.splitlines():
        if line.startswith(metric + "{"):
            body = line[len(metric) + 1 : line.rindex("}")]
            found.append(dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', body)))
    return found


def _v2_infer(channel: grpc.Channel, name: str) -> grpc.StatusCode:
    call = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=V2.ModelInferRequest.SerializeToString,
        response_deserializer=V2.ModelInferResponse.FromString,
    )
    tensor = V2.ModelInferRequest.InferInputTensor(
        name="text", datatype="BYTES", shape=[1], contents=V2.InferTensorContents(bytes_contents=[b"seven"])
    )
    try:
        call(V2.ModelInferRequest(model_name=name, inputs=[tensor]), timeout=30)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_unknown_model_names_share_one_label_on_every_door(running_server: RunningServer) -> None:
    before = httpx.get(f"{running_server.http_url}/metrics", timeout=10).text
    names = [f"nope-{uuid.uuid4().hex}" for _ in range(20)]
    long_http = "L" * 2000  # a long name in the URL
    long_grpc = "G" * 1_000_000  # a 1 MB name in one gRPC message
    with httpx.Client(base_url=running_server.http_url, timeout=30) as http:
        for name in [*names, long_http]:
            assert http.post(f"/v1/models/{name}/predict", json={"text": "seven"}).status_code == 404
            v2 = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["seven"]}]}
            assert http.post(f"/v2/models/{name}/infer", json=v2).status_code == 404
    with grpc.insecure_channel(running_server.grpc_target) as channel:
        native = pb_grpc.FusionServeStub(channel)
        for name in [*names, long_grpc]:
            try:
                native.Predict(pb.PredictRequest(model=name, items=[pb.Item(text="seven")]), timeout=30)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND
            else:
                raise AssertionError("an unknown model answered")
            assert _v2_infer(channel, name) == grpc.StatusCode.NOT_FOUND
    after = httpx.get(f"{running_server.http_url}/metrics", timeout=10).text
    for name in names:
        assert name not in after
    assert "L" * 200 not in after and "G" * 200 not in after
    unknown = {
        (labels["protocol"], labels["outcome"])
        for labels in _series(after, "fusionserve_requests_total")
        if labels["model"] == "_unknown"
    }
    for protocol in ("http", "v2-rest", "grpc", "v2-grpc"):
        assert (protocol, "not_found") in unknown, protocol
    # Twenty new names on four doors added no series beyond the _unknown ones.
    new_series = {line.split(" ")[0] for line in after.splitlines() if not line.startswith("#")} - {
        line.split(" ")[0] for line in before.splitlines() if not line.startswith("#")
    }
    assert all('model="_unknown"' in s or "model=" not in s for s in new_series), sorted(new_series)[:5]
    assert len(after) < len(before) + 20_000
    for value in _LABEL_VALUE.findall(after):
        assert len(value) <= MAX_LABEL_CHARS


def test_every_label_value_is_bounded() -> None:
    """Whatever reaches a metric (a future label, an operator's long name) is cut to the bound."""
    from fusionserve.service.metrics import Metrics

    metrics = Metrics()
    metrics.child(metrics.requests, "m" * 10_000, "1", "http", "success").inc()
    text = metrics.exposition()[0].decode()
    values = _LABEL_VALUE.findall(text)
    assert values and max(len(v) for v in values) == MAX_LABEL_CHARS
