"""The same files give the same answer through all four doors.

Native HTTP (multipart), V2 REST (tritonclient HTTP, binary), V2 gRPC
(tritonclient gRPC) and native gRPC: top-k labels equal, scores within 1e-5.
"""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from fusionserve.service.grpc.generated.fusionserve.v1 import fusionserve_pb2 as pb
from fusionserve.service.grpc.generated.fusionserve.v1 import fusionserve_pb2_grpc as pb_grpc
from tests.conftest import RunningServer, Sample
from tests.integration.v2_helpers import CLASSIFIER, object_column, top

TOP_K = 3
Answer = list[tuple[str, float]]


def _native_http(server: RunningServer, sample: Sample, subset: tuple[str, ...]) -> Answer:
    parts: dict[str, tuple[str | None, bytes | str]] = {"top_k": (None, str(TOP_K))}  # always multipart
    parts.update({m: (m, getattr(sample, "jpeg" if m == "image" else "wav")) for m in subset if m != "text"})
    if "text" in subset:
        parts["text"] = (None, sample.text)
    body = httpx.post(f"{server.http_url}/v1/models/{CLASSIFIER}/predict", files=parts, timeout=60)
    assert body.status_code == 200, body.text
    return [(p["label"], float(p["score"])) for p in body.json()["predictions"]]


def _values(sample: Sample, subset: tuple[str, ...]) -> dict[str, bytes]:
    every = {"image": sample.jpeg, "audio": sample.wav, "text": sample.text.encode()}
    return {m: every[m] for m in subset}


def _v2_rest(server: RunningServer, sample: Sample, subset: tuple[str, ...]) -> Answer:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    try:
        inputs = []
        for name, value in _values(sample, subset).items():
            tensor = httpclient.InferInput(name, [1], "BYTES")
            tensor.set_data_from_numpy(object_column([value]), binary_data=True)
            inputs.append(tensor)
        result = client.infer(CLASSIFIER, inputs, parameters={"top_k": TOP_K})
        return top(result.as_numpy("labels"), result.as_numpy("scores"))[0]
    finally:
        client.close()


def _v2_grpc(server: RunningServer, sample: Sample, subset: tuple[str, ...]) -> Answer:
    client = grpcclient.InferenceServerClient(server.grpc_target)
    try:
        inputs = []
        for name, value in _values(sample, subset).items():
            tensor = grpcclient.InferInput(name, [1], "BYTES")
            tensor.set_data_from_numpy(object_column([value]))
            inputs.append(tensor)
        result = client.infer(CLASSIFIER, inputs, parameters={"top_k": TOP_K})
        return top(result.as_numpy("labels"), result.as_numpy("scores"))[0]
    finally:
        client.close()


def _native_grpc(server: RunningServer, sample: Sample, subset: tuple[str, ...]) -> Answer:
    values = _values(sample, subset)
    text = values.get("text")
    item = pb.Item(image=values.get("image"), audio=values.get("audio"), text=text.decode() if text else None)
    with grpc.insecure_channel(server.grpc_target) as channel:
        answer = pb_grpc.FusionServeStub(channel).Predict(
            pb.PredictRequest(model=CLASSIFIER, items=[item], top_k=TOP_K), timeout=60
        )
    return [(p.label, p.score) for p in answer.results[0].predictions]


@pytest.mark.parametrize("subset", [("image", "audio", "text"), ("image",), ("audio", "text"), ("text",)])
def test_four_doors_agree(
    running_server: RunningServer, samples: list[Sample], subset: tuple[str, ...]
) -> None:
    for sample in samples[:3]:
        answers = {
            "native-http": _native_http(running_server, sample, subset),
            "v2-rest": _v2_rest(running_server, sample, subset),
            "v2-grpc": _v2_grpc(running_server, sample, subset),
            "native-grpc": _native_grpc(running_server, sample, subset),
        }
        reference = answers["native-http"]
        assert len(reference) == TOP_K
        for door, answer in answers.items():
            assert [label for label, _ in answer] == [label for label, _ in reference], door
            np.testing.assert_allclose(
                [s for _, s in answer], [s for _, s in reference], atol=1e-5, err_msg=door
            )


def test_metrics_label_each_protocol(running_server: RunningServer, samples: list[Sample]) -> None:
    text_only = ("text",)
    for door in (_native_http, _v2_rest, _v2_grpc, _native_grpc):
        door(running_server, samples[0], text_only)
    refused = httpx.post(
        f"{running_server.http_url}/v2/models/{CLASSIFIER}/infer",
        json={"inputs": [{"name": "colour", "datatype": "BYTES", "shape": [1], "data": ["red"]}]},
        timeout=30,
    )
    assert refused.status_code == 400
    metrics = httpx.get(f"{running_server.http_url}/metrics", timeout=30).text

    def count(protocol: str, outcome: str) -> float:
        labels = (f'model="{CLASSIFIER}"', f'protocol="{protocol}"', f'outcome="{outcome}"')
        lines = [ln for ln in metrics.splitlines() if ln.startswith("fusionserve_requests_total{")]
        return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines if all(label in ln for label in labels))

    for protocol in ("http", "v2-rest", "v2-grpc", "grpc"):
        assert count(protocol, "success") >= 1, protocol
    assert count("v2-rest", "client_error") >= 1
