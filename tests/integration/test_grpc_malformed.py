"""Request bytes that do not parse as their protobuf type: INVALID_ARGUMENT, not UNKNOWN.

Raw bytes straight onto the wire (a channel without serializers), as a
broken or hostile client would send them; the server answers each with a
clear status, logs no traceback, and keeps serving.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from fusionserve.service.grpc.generated.fusionserve.v1 import fusionserve_pb2 as pb
from fusionserve.service.grpc.protos import V2
from tests.conftest import RunningServer
from tests.integration.v2_helpers import CLASSIFIER

GARBAGE = [
    b"\xff\xff\xff\xff",  # an invalid tag
    b"\x0a\x05ab",  # a length running past the end
    b"\x12\x80\x80\x80\x80\x10",  # a varint length far beyond the message
]
UNARY = [
    ("/fusionserve.v1.FusionServe/Predict", "fusionserve.v1.PredictRequest"),
    ("/inference.GRPCInferenceService/ModelInfer", "inference.ModelInferRequest"),
    ("/inference.GRPCInferenceService/ModelMetadata", "inference.ModelMetadataRequest"),
]


@pytest.fixture(scope="module")
def channel(running_server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(running_server.grpc_target) as channel:
        yield channel


@pytest.mark.parametrize(("path", "type_name"), UNARY)
@pytest.mark.parametrize("body", GARBAGE)
def test_undecodable_unary_request(channel: grpc.Channel, path: str, type_name: str, body: bytes) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        channel.unary_unary(path)(body, timeout=10)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"not a valid {type_name} message" in failed.value.details()


def test_undecodable_stream_message_is_answered_and_the_stream_goes_on(channel: grpc.Channel) -> None:
    good = pb.PredictRequest(model=CLASSIFIER, items=[pb.Item(text="a five")], request_id="ok-1")
    call = channel.stream_stream("/fusionserve.v1.FusionServe/PredictStream")
    answers = [
        pb.PredictStreamResponse.FromString(raw)
        for raw in call(iter([GARBAGE[0], good.SerializeToString()]), timeout=30)
    ]
    by_kind = {a.WhichOneof("result"): a for a in answers}
    assert by_kind["response"].request_id == "ok-1"
    assert by_kind["error"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "not a valid fusionserve.v1.PredictRequest" in by_kind["error"].error.message


def test_v2_stream_answers_an_undecodable_message(channel: grpc.Channel) -> None:
    call = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
    answers = [V2.ModelStreamInferResponse.FromString(raw) for raw in call(iter([GARBAGE[1]]), timeout=30)]
    assert len(answers) == 1
    assert "not a valid inference.ModelInferRequest" in answers[0].error_message


def test_no_traceback_and_still_serving(running_server: RunningServer, channel: grpc.Channel) -> None:
    for body in GARBAGE:
        with pytest.raises(grpc.RpcError):
            channel.unary_unary("/fusionserve.v1.FusionServe/Predict")(body, timeout=10)
    good = pb.PredictRequest(model=CLASSIFIER, items=[pb.Item(text="a five")], top_k=1)
    answer = pb.PredictResponse.FromString(
        channel.unary_unary("/fusionserve.v1.FusionServe/Predict")(good.SerializeToString(), timeout=10)
    )
    assert answer.results[0].predictions[0].label
    assert "DecodeError" not in running_server.log()
