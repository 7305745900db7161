"""gRPC calls carry a request id like HTTP ones: the client's own, echoed, or a new one."""

from __future__ import annotations

import json

import grpc
import pytest

from fusionserve.service.grpc.generated.fusionserve.v1 import fusionserve_pb2 as pb
from fusionserve.service.grpc.generated.fusionserve.v1 import fusionserve_pb2_grpc as pb_grpc
from tests.conftest import RunningServer


def trailing_id(call: grpc.Call) -> str:
    return dict(call.trailing_metadata() or ())["x-request-id"]


def test_request_id_is_echoed_or_generated(running_server: RunningServer) -> None:
    with grpc.insecure_channel(running_server.grpc_target) as channel:
        stub = pb_grpc.FusionServeStub(channel)
        request = pb.PredictRequest(model="digits-fusion", items=[pb.Item(text="a seven")], top_k=1)
        _, call = stub.Predict.with_call(request, metadata=(("x-request-id", "trace-7"),), timeout=10)
        assert trailing_id(call) == "trace-7"
        _, first = stub.Predict.with_call(request, timeout=10)
        _, second = stub.Predict.with_call(request, timeout=10)
        assert trailing_id(first) != trailing_id(second)
        with pytest.raises(grpc.RpcError) as failed:
            stub.Predict(
                pb.PredictRequest(model="nope", items=[pb.Item(text="x")]),
                metadata=(("x-request-id", "trace-8"),),
                timeout=10,
            )
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        assert trailing_id(failed.value) == "trace-8"  # errors carry it too
    assert '"rpc": "Predict"' in running_server.log() and '"request_id": "trace-8"' in running_server.log()


def test_stream_messages_are_logged_with_their_ids(running_server: RunningServer) -> None:
    def requests():  # one good message with the client's id, one without, one failing
        yield pb.PredictRequest(model="digits-fusion", items=[pb.Item(text="a two")], request_id="s-1")
        yield pb.PredictRequest(model="digits-fusion", items=[pb.Item(text="a three")])
        yield pb.PredictRequest(model="nope", items=[pb.Item(text="x")], request_id="s-3")

    with grpc.insecure_channel(running_server.grpc_target) as channel:
        answers = list(pb_grpc.FusionServeStub(channel).PredictStream(requests(), timeout=30))
    by_kind = {a.WhichOneof("result"): a for a in answers if a.request_id != "s-1"}
    generated = by_kind["response"].request_id
    assert generated and generated == by_kind["response"].response.request_id
    assert by_kind["error"].request_id == "s-3"
    lines = [json.loads(line) for line in running_server.log().splitlines() if '"PredictStream"' in line]
    logged = {line["request_id"]: line["code"] for line in lines}
    assert logged.get("s-1") == "OK" and logged.get(generated) == "OK"
    assert logged.get("s-3") == "NOT_FOUND"
