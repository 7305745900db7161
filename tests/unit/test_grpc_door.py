"""The gRPC door against a fake data plane: every core error's status code, deadlines, streams.

A real grpc.aio server on 127.0.0.1 and the standard clients (tritonclient's
gRPC client, the native stubs); only the core behind the door is scripted.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as triton
from tritonclient.utils import InferenceServerException

from fusionserve.service.config import Settings
from fusionserve.service.errors import (
    DeadlineExceeded,
    FusionServeError,
    InternalError,
    InvalidInput,
    LimitExceeded,
    ModelNotFound,
    NotReady,
    Overloaded,
)
from fusionserve.service.grpc.generated.fusionserve.v1 import fusionserve_pb2 as pb
from fusionserve.service.grpc.generated.fusionserve.v1 import fusionserve_pb2_grpc as pb_grpc
from fusionserve.service.grpc.server import start_grpc_server
from tests.unit.v2_fakes import FakeDataPlane


@pytest.fixture
async def door() -> AsyncIterator[tuple[FakeDataPlane, str]]:
    dataplane = FakeDataPlane()
    server, health = await start_grpc_server(dataplane, Settings(host="127.0.0.1", grpc_port=0))
    health.set_serving(True)
    yield dataplane, f"127.0.0.1:{health.port}"
    await server.stop(0)


def _text(*values: bytes) -> triton.InferInput:
    tensor = triton.InferInput("text", [len(values)], "BYTES")
    tensor.set_data_from_numpy(np.array(values, dtype=object))
    return tensor


CASES = [
    (InvalidInput("bad image"), "StatusCode.INVALID_ARGUMENT", "bad image"),
    (LimitExceeded("image too large"), "StatusCode.RESOURCE_EXHAUSTED", "image too large"),
    (ModelNotFound("no such model"), "StatusCode.NOT_FOUND", "no such model"),
    (Overloaded("queue full"), "StatusCode.RESOURCE_EXHAUSTED", "queue full"),
    (NotReady("draining"), "StatusCode.UNAVAILABLE", "draining"),
    (DeadlineExceeded("too late"), "StatusCode.DEADLINE_EXCEEDED", "too late"),
    (InternalError("worker died"), "StatusCode.INTERNAL", "worker died"),
]


@pytest.mark.parametrize(("error", "status", "message"), CASES)
async def test_v2_core_errors_map_to_status_codes(
    door: tuple[FakeDataPlane, str], error: FusionServeError, status: str, message: str
) -> None:
    dataplane, target = door
    dataplane.fail_with = error
    client = triton.InferenceServerClient(target)
    try:
        with pytest.raises(InferenceServerException) as caught:
            await client.infer("digits-fusion", [_text(b"seven")])
        assert caught.value.status() == status
        assert message in caught.value.message()
        dataplane.fail_with = None
        assert (await client.infer("digits-fusion", [_text(b"seven")])).as_numpy("labels") is not None
    finally:
        await client.close()


@pytest.mark.parametrize(("error", "status", "message"), CASES)
async def test_native_core_errors_map_to_status_codes(
    door: tuple[FakeDataPlane, str], error: FusionServeError, status: str, message: str
) -> None:
    dataplane, target = door
    dataplane.fail_with = error
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.FusionServeStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Predict(pb.PredictRequest(model="digits-fusion", items=[pb.Item(text="seven")]))
        assert str(caught.value.code()) == status
        assert message in (caught.value.details() or "")


async def test_unexpected_exception_is_internal_without_leaking_details(
    door: tuple[FakeDataPlane, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    dataplane, target = door

    async def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret stack detail")

    monkeypatch.setattr(dataplane, "predict", explode)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.FusionServeStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Predict(pb.PredictRequest(model="digits-fusion", items=[pb.Item(text="x")]))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "RuntimeError" in (caught.value.details() or "")
    assert "secret" not in (caught.value.details() or "")


async def test_client_deadline_becomes_the_core_timeout(door: tuple[FakeDataPlane, str]) -> None:
    dataplane, target = door
    client = triton.InferenceServerClient(target)
    try:
        await client.infer("digits-fusion", [_text(b"a")], client_timeout=30)
        await client.infer("digits-fusion", [_text(b"a")])
        await client.infer("digits-fusion", [_text(b"a")], client_timeout=30, timeout=2_000_000)
    finally:
        await client.close()
    with_deadline, without, with_parameter = (call.timeout_s for call in dataplane.calls)
    # gRPC sends the deadline as a timeout header, rounded up: roughly the client's 30 s, never none.
    assert with_deadline is not None and 20 < with_deadline <= 31
    assert without is None
    assert with_parameter == 2.0  # Triton's "timeout" parameter (µs) when it is the tighter


async def test_refusals_before_the_core_are_counted(door: tuple[FakeDataPlane, str]) -> None:
    dataplane, target = door
    client = triton.InferenceServerClient(target)
    try:
        wrong = triton.InferInput("colour", [1], "BYTES")
        wrong.set_data_from_numpy(np.array([b"red"], dtype=object))
        with pytest.raises(InferenceServerException, match=r"unknown input\(s\) \['colour'\]"):
            await client.infer("digits-fusion", [wrong])
    finally:
        await client.close()
    assert dataplane.rejected == [("digits-fusion", "v2-grpc", "InvalidInput")]
    assert dataplane.calls == []


async def test_rows_and_parameters_reach_the_core(door: tuple[FakeDataPlane, str]) -> None:
    dataplane, target = door
    client = triton.InferenceServerClient(target)
    try:
        image = triton.InferInput("image", [2, 1], "BYTES")
        image.set_data_from_numpy(np.array([[b"\x89PNG-one"], [b""]], dtype=object))
        result = await client.infer(
            "digits-fusion", [image, _text(b"seven", b"three")], parameters={"top_k": 4}, request_id="abc"
        )
    finally:
        await client.close()
    call = dataplane.calls[-1]
    assert (call.protocol, call.top_k) == ("v2-grpc", 4)
    assert [(r.image, r.text) for r in call.rows] == [(b"\x89PNG-one", "seven"), (None, "three")]
    assert result.get_response().id == "abc"
    assert result.as_numpy("labels").shape == (2, 4)
    assert result.as_numpy("probabilities").shape == (2, 10)


async def test_stream_survives_a_failed_request(door: tuple[FakeDataPlane, str]) -> None:
    _, target = door
    client = triton.InferenceServerClient(target)

    async def requests() -> AsyncIterator[dict[str, object]]:
        yield {"model_name": "digits-fusion", "inputs": [_text(b"one")], "request_id": "1"}
        yield {"model_name": "nope", "inputs": [_text(b"two")], "request_id": "2"}
        yield {"model_name": "digits-fusion", "inputs": [_text(b"three")], "request_id": "3"}

    answers: dict[str, str] = {}
    try:
        async for result, error in client.stream_infer(requests()):
            if error is not None:
                answers[f"error-{len(answers)}"] = error.message()
            else:
                answers[result.get_response().id] = result.as_numpy("labels")[0, 0].decode()
    finally:
        await client.close()
    assert set(answers) >= {"1", "3"}
    assert any("unknown model 'nope'" in v for k, v in answers.items() if k.startswith("error"))


async def test_native_stream_answers_each_request_by_id(door: tuple[FakeDataPlane, str]) -> None:
    _, target = door

    async def requests() -> AsyncIterator[pb.PredictRequest]:
        for i in range(20):
            model = "digits-fusion" if i != 7 else "nope"
            yield pb.PredictRequest(model=model, items=[pb.Item(text="x" * i)], request_id=str(i))

    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.FusionServeStub(channel)
        answers = {a.request_id: a async for a in stub.PredictStream(requests())}
    assert set(answers) == {str(i) for i in range(20)}
    assert answers["7"].WhichOneof("result") == "error"
    assert answers["7"].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert answers["3"].response.results[0].predictions[0].label == str((7 * 3) % 10)


async def test_health_overall_per_model_and_drain(door: tuple[FakeDataPlane, str]) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    dataplane, target = door
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        async def status(service: str) -> int:
            return (await stub.Check(health_pb2.HealthCheckRequest(service=service))).status

        assert await status("") == serving
        assert await status("inference.GRPCInferenceService") == serving
        assert await status("digits-fusion") == serving
        dataplane.loaded["digits-embed"] = False
        assert await status("digits-embed") == not_serving
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await status("no-such-model")
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        dataplane.is_ready = False
        assert await status("") == not_serving


async def test_health_set_serving_is_the_drain_switch() -> None:
    from fusionserve.service.grpc.health import NOT_SERVING, SERVING, HealthService

    health = HealthService(FakeDataPlane())
    assert health.status("") == NOT_SERVING  # until the composition root says the models are up
    health.set_serving(True)
    assert health.status("") == SERVING and health.status("digits-fusion") == SERVING
    health.set_serving(False)
    assert health.status("") == NOT_SERVING and health.status("digits-fusion") == NOT_SERVING


async def test_bearer_tokens_guard_inference_and_repository_calls() -> None:
    dataplane = FakeDataPlane()
    settings = Settings(
        host="127.0.0.1",
        grpc_port=0,
        api_token="data-secret",
        admin_token="admin-secret",
        model_control="explicit",  # repository calls are refused without it
    )
    server, health = await start_grpc_server(dataplane, settings)
    client = triton.InferenceServerClient(f"127.0.0.1:{health.port}")
    try:
        assert await client.is_server_live()  # health and metadata stay open
        with pytest.raises(InferenceServerException) as caught:
            await client.infer("digits-fusion", [_text(b"a")])
        assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException, match="invalid bearer token"):
            await client.infer("digits-fusion", [_text(b"a")], headers={"authorization": "Bearer wrong"})
        ok = await client.infer(
            "digits-fusion", [_text(b"a")], headers={"authorization": "Bearer data-secret"}
        )
        assert ok.as_numpy("labels") is not None
        with pytest.raises(InferenceServerException, match="bearer token"):
            await client.unload_model("digits-embed", headers={"authorization": "Bearer data-secret"})
        await client.unload_model("digits-embed", headers={"authorization": "Bearer admin-secret"})
        assert dataplane.loaded["digits-embed"] is False
    finally:
        await client.close()
        await server.stop(0)


async def test_streams_need_the_token_too() -> None:
    settings = Settings(host="127.0.0.1", grpc_port=0, api_token="data-secret")
    server, health = await start_grpc_server(FakeDataPlane(), settings)

    async def requests() -> AsyncIterator[pb.PredictRequest]:
        yield pb.PredictRequest(model="digits-fusion", items=[pb.Item(text="x")], request_id="1")

    async def no_requests() -> AsyncIterator[pb.PredictRequest]:
        return
        yield  # an async generator that sends nothing

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{health.port}") as channel:
            stub = pb_grpc.FusionServeStub(channel)
            # No message on the refused stream: a client still sending when the
            # server aborts may see its send fail (INTERNAL) instead of the status.
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                _ = [a async for a in stub.PredictStream(no_requests())]
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            metadata = (("authorization", "Bearer data-secret"),)
            answers = [a async for a in stub.PredictStream(requests(), metadata=metadata)]
            assert [a.request_id for a in answers] == ["1"]
    finally:
        await server.stop(0)


async def test_stream_holds_back_a_reader_that_does_not_read() -> None:
    """At most ``limit`` answers wait undelivered; the rest of the requests are not even read."""
    from fusionserve.service.grpc.streaming import pipelined

    pulled = 0

    async def requests() -> AsyncIterator[int]:
        nonlocal pulled
        for i in range(100):
            pulled += 1
            yield i

    async def double(value: int) -> int:
        return value * 2

    stream = pipelined(requests(), double, limit=4)
    first = await anext(stream)
    for _ in range(20):  # let the reader run as far as it can
        await asyncio.sleep(0)
    assert first in (0, 2, 4, 6)
    assert pulled <= 4 + 2  # the slots, plus the one being read, plus the one just released
    rest = [x async for x in stream]
    assert sorted([first, *rest]) == [2 * i for i in range(100)]


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command line."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_uses_the_configured_certificate(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    settings = Settings(host="127.0.0.1", grpc_port=0, tls_cert_file=cert, tls_key_file=key)
    server, health = await start_grpc_server(FakeDataPlane(), settings)
    health.set_serving(True)
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        async with grpc.aio.secure_channel(f"127.0.0.1:{health.port}", credentials) as channel:
            answer = await pb_grpc.FusionServeStub(channel).Predict(
                pb.PredictRequest(model="digits-fusion", items=[pb.Item(text="seven")])
            )
            assert answer.results[0].predictions
        async with grpc.aio.insecure_channel(f"127.0.0.1:{health.port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await pb_grpc.FusionServeStub(plain).ListModels(pb.ListModelsRequest(), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)
