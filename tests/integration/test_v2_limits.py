"""Limits: oversized messages refused with the right status by both doors (the server keeps
serving), compressed bodies held to the same bounds, and gRPC's per-connection stream limit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import RunningServer, launch_server
from tests.integration.v2_helpers import CLASSIFIER, object_column

LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def small_server(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = {
        "FUSIONSERVE_MAX_BODY_BYTES": str(LIMIT),
        "FUSIONSERVE_GRPC_MAX_MESSAGE_BYTES": str(LIMIT),
        "FUSIONSERVE_GRPC_MAX_CONCURRENT_STREAMS": "2",
    }
    server = launch_server(model_repository, tmp_path_factory.mktemp("limits"), env=env)
    yield server
    server.stop()


def _text(size: int) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(object_column([b"x" * size]))
    return tensor


def test_oversized_grpc_message_is_resource_exhausted(small_server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(small_server.grpc_target)
    try:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(CLASSIFIER, [_text(2 * LIMIT)])
        assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "larger than max" in caught.value.message()
        assert client.infer(CLASSIFIER, [_text(5)]).as_numpy("labels").shape == (1, 1)
    finally:
        client.close()


def test_oversized_rest_body_is_413(small_server: RunningServer) -> None:
    image = np.zeros((1, 2 * LIMIT), dtype=np.uint8).tobytes()
    answer = httpx.post(
        f"{small_server.http_url}/v2/models/{CLASSIFIER}/infer",
        content=b'{"inputs":[]}' + image,
        headers={"Inference-Header-Content-Length": "13"},
        timeout=30,
    )
    assert answer.status_code == 413
    assert "max_body_bytes" in answer.text
    client = httpclient.InferenceServerClient(f"127.0.0.1:{small_server.http_port}")
    try:
        small = httpclient.InferInput("text", [1], "BYTES")
        small.set_data_from_numpy(object_column([b"seven"]))
        assert client.infer(CLASSIFIER, [small]).as_numpy("labels").shape == (1, 1)
    finally:
        client.close()


def test_compressed_body_that_inflates_past_the_limit_is_413(small_server: RunningServer) -> None:
    """A gzip bomb: 8 MiB of JSON padding in ~8 KiB, against a 256 KiB limit."""
    import gzip

    document = b'{"inputs": [], "pad": "' + b" " * (8 * 1024 * 1024) + b'"}'
    bomb = gzip.compress(document)
    assert len(bomb) < LIMIT
    url = f"{small_server.http_url}/v2/models/{CLASSIFIER}/infer"
    answer = httpx.post(url, content=bomb, headers={"Content-Encoding": "gzip"}, timeout=30)
    assert answer.status_code == 413 and "inflates beyond max_body_bytes" in answer.json()["error"]
    client = httpclient.InferenceServerClient(f"127.0.0.1:{small_server.http_port}")
    try:
        small = httpclient.InferInput("text", [1], "BYTES")
        small.set_data_from_numpy(object_column([b"seven"]))
        answer = client.infer(CLASSIFIER, [small], request_compression_algorithm="gzip")
        assert answer.as_numpy("labels").shape == (1, 1)
    finally:
        client.close()


def test_compressed_grpc_message_that_inflates_past_the_limit_is_refused(small_server: RunningServer) -> None:
    """gRPC's own message compression: the inflated size is held to the same limit."""
    client = grpcclient.InferenceServerClient(small_server.grpc_target)
    try:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(CLASSIFIER, [_text(8 * LIMIT)], compression_algorithm="gzip")
        assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        answer = client.infer(CLASSIFIER, [_text(5)], compression_algorithm="gzip")
        assert answer.as_numpy("labels").shape == (1, 1)
    finally:
        client.close()


def test_calls_beyond_the_stream_limit_wait_for_a_free_stream(small_server: RunningServer) -> None:
    """FUSIONSERVE_GRPC_MAX_CONCURRENT_STREAMS=2: a third call on the connection waits."""
    import queue

    from fusionserve.service.grpc.generated.fusionserve.v1 import fusionserve_pb2 as pb
    from fusionserve.service.grpc.generated.fusionserve.v1 import fusionserve_pb2_grpc as pb_grpc

    request = pb.PredictRequest(model=CLASSIFIER, items=[pb.Item(text="a six")], top_k=1)
    with grpc.insecure_channel(small_server.grpc_target) as channel:
        stub = pb_grpc.FusionServeStub(channel)
        feeds: list[queue.Queue[object]] = [queue.Queue(), queue.Queue()]
        held = [stub.PredictStream(iter(feed.get, None), timeout=60) for feed in feeds]
        for feed, stream in zip(feeds, held, strict=True):  # both streams open and answering
            feed.put(request)
            assert next(stream).WhichOneof("result") == "response"
        with pytest.raises(grpc.RpcError) as waited:
            stub.Predict(request, timeout=1.0)
        assert waited.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        feeds[0].put(None)  # one stream ends: the next call gets its slot
        assert list(held[0]) == []
        assert stub.Predict(request, timeout=10).results[0].predictions
        feeds[1].put(None)
        assert list(held[1]) == []
