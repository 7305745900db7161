"""Class 11: ids a client puts in a message body are bounded like ``x-request-id``.

The V2 ``id`` (REST body, gRPC ``ModelInferRequest.id``) and the native
``request_id`` are echoed in the answer; before this bound a 1 MiB id came
back in full (and a stream's error answer repeated it). Now an id must be
empty or 1-128 characters of ``[A-Za-z0-9._:-]``; anything else is refused
(HTTP 400 / ``INVALID_ARGUMENT``, naming the field, never repeating the
value), because the id is the client's key to match answers: Triton clients
send ids like ``"1"`` or a uuid, which pass unchanged.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from fusionserve.service.grpc.protos import NATIVE, V2
from tests.conftest import RunningServer

CLASSIFIER = "digits-fusion"
HUGE = "a" * (1024 * 1024)
#: Over the length, a newline (also at the end, which a ``$`` anchor let through), a space, a quote.
BAD_IDS = [HUGE, "a" * 129, "id\nforged", "id\n", "with space", 'quote"d', "é"]
GOOD_IDS = ["1", str(uuid.uuid4()), "client-7:a.b_c", "x" * 128]


def _text_input(module, text: bytes):  # type: ignore[no-untyped-def]
    tensor = module.InferInput("text", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[text]], dtype=object))
    return tensor


def _v2_body(request_id: str) -> dict[str, object]:
    text = {"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": ["seven"]}
    return {"id": request_id, "inputs": [text]}


def test_v2_rest_id_is_echoed_when_plain_and_refused_otherwise(running_server: RunningServer) -> None:
    url = f"{running_server.http_url}/v2/models/{CLASSIFIER}/infer"
    for bad in BAD_IDS:
        answer = httpx.post(url, json=_v2_body(bad), timeout=30)
        assert answer.status_code == 400, (bad[:20], answer.text[:200])
        assert "'id'" in answer.json()["error"] and len(answer.content) < 1024
    client = httpclient.InferenceServerClient(running_server.http_url.removeprefix("http://"))
    try:
        for good in GOOD_IDS:
            result = client.infer(CLASSIFIER, [_text_input(httpclient, b"seven")], request_id=good)
            assert result.get_response()["id"] == good
        with pytest.raises(InferenceServerException) as refused:
            client.infer(CLASSIFIER, [_text_input(httpclient, b"seven")], request_id="a" * 129)
        assert refused.value.status() == "400" and "'id'" in refused.value.message()
    finally:
        client.close()
    assert HUGE[:4096] not in running_server.log()


def test_v2_grpc_id_is_echoed_when_plain_and_refused_otherwise(running_server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(running_server.grpc_target)
    try:
        for good in GOOD_IDS:
            result = client.infer(CLASSIFIER, [_text_input(grpcclient, b"seven")], request_id=good)
            assert result.get_response().id == good
        for bad in BAD_IDS:
            with pytest.raises(InferenceServerException) as refused:
                client.infer(CLASSIFIER, [_text_input(grpcclient, b"seven")], request_id=bad)
            assert refused.value.status() == "StatusCode.INVALID_ARGUMENT", bad[:20]
            assert "'id'" in refused.value.message() and len(refused.value.message()) < 1024
    finally:
        client.close()
    assert HUGE[:4096] not in running_server.log()


def _v2_message(request_id: str, model: str = CLASSIFIER):  # type: ignore[no-untyped-def]
    tensor = V2.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(b"seven")
    return V2.ModelInferRequest(model_name=model, id=request_id, inputs=[tensor])


def test_v2_grpc_stream_refuses_a_bad_id_without_repeating_it(running_server: RunningServer) -> None:
    def requests() -> Iterator[object]:
        yield _v2_message("s-1")
        yield _v2_message(HUGE)
        yield _v2_message("ok-2", model="m" * 100_000)

    with grpc.insecure_channel(running_server.grpc_target) as channel:
        stream = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=V2.ModelInferRequest.SerializeToString,
            response_deserializer=V2.ModelStreamInferResponse.FromString,
        )
        answers = list(stream(requests(), timeout=60))
    assert len(answers) == 3
    by_id = {a.infer_response.id: a for a in answers}
    assert not by_id["s-1"].error_message
    refused = by_id[""]
    assert "'id'" in refused.error_message and len(refused.SerializeToString()) < 1024
    unknown = by_id["ok-2"]
    assert unknown.error_message and len(unknown.SerializeToString()) < 1024  # the name cut, not echoed whole


def test_native_grpc_request_id_is_bounded(running_server: RunningServer) -> None:
    def predict(request_id: str):  # type: ignore[no-untyped-def]
        return NATIVE.PredictRequest(
            model=CLASSIFIER, items=[NATIVE.Item(text="seven")], request_id=request_id
        )

    with grpc.insecure_channel(running_server.grpc_target) as channel:
        unary = channel.unary_unary(
            "/fusionserve.v1.FusionServe/Predict",
            request_serializer=NATIVE.PredictRequest.SerializeToString,
            response_deserializer=NATIVE.PredictResponse.FromString,
        )
        embed = channel.unary_unary(
            "/fusionserve.v1.FusionServe/Embed",
            request_serializer=NATIVE.EmbedRequest.SerializeToString,
            response_deserializer=NATIVE.EmbedResponse.FromString,
        )
        stream = channel.stream_stream(
            "/fusionserve.v1.FusionServe/PredictStream",
            request_serializer=NATIVE.PredictRequest.SerializeToString,
            response_deserializer=NATIVE.PredictStreamResponse.FromString,
        )
        assert unary(predict("trace-1"), timeout=30).request_id == "trace-1"
        for bad in (HUGE, "a\n"):
            with pytest.raises(grpc.RpcError) as refused:
                unary(predict(bad), timeout=30)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "'request_id'" in (refused.value.details() or "")
        embedding = NATIVE.EmbedRequest(
            model="digits-embed", items=[NATIVE.Item(text="seven")], request_id=HUGE
        )
        with pytest.raises(grpc.RpcError) as refused:
            embed(embedding, timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        answers = list(stream(iter([predict("s-1"), predict(HUGE)]), timeout=60))
    errors = [a for a in answers if a.WhichOneof("result") == "error"]
    assert len(answers) == 2 and len(errors) == 1
    assert errors[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert errors[0].request_id and len(errors[0].SerializeToString()) < 1024
    assert HUGE[:4096] not in running_server.log()


def test_the_rule() -> None:
    from fusionserve.service.client_ids import check_client_id, echoable_id, is_plain_id
    from fusionserve.service.errors import InvalidInput

    assert all(is_plain_id(i) for i in [*GOOD_IDS, ""])
    assert not any(is_plain_id(i) for i in BAD_IDS)
    assert echoable_id(HUGE) == "" and echoable_id("ok") == "ok"
    with pytest.raises(InvalidInput) as refused:
        check_client_id("id\n", "request_id")
    assert refused.value.details == {"field": "request_id"} and "id\n" not in refused.value.message
