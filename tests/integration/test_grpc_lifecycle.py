"""gRPC under load shedding, deadlines and SIGTERM draining, on real servers.

Compute is held with the ``gate`` failpoint (a file whose absence blocks every
model call), so nothing here depends on timing.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fusionserve.service.grpc.generated.fusionserve.v1 import fusionserve_pb2 as pb
from fusionserve.service.grpc.generated.fusionserve.v1 import fusionserve_pb2_grpc as pb_grpc
from tests.conftest import RunningServer, Sample, copy_entry
from tests.integration.test_lifecycle import metric_value, wait_for_metric
from tests.integration.v2_helpers import CLASSIFIER

GatedStart = Callable[..., tuple[RunningServer, Path]]


@pytest.fixture
def gated(tmp_path: Path, model_repository: Path, server_factory: Callable[..., RunningServer]) -> GatedStart:
    """A server with gRPC whose compute waits for a gate file (open while warming up)."""

    def start(**config: object) -> tuple[RunningServer, Path]:
        gate = tmp_path / "gate"
        gate.touch()
        repo = copy_entry(model_repository, tmp_path / "repo", CLASSIFIER, **config)
        server = server_factory(repo, grpc=True, env={"FUSIONSERVE_FAILPOINTS": f"gate={gate}"})
        gate.unlink()
        return server, gate

    return start


def _request(sample: Sample, request_id: str = "") -> pb.PredictRequest:
    return pb.PredictRequest(model=CLASSIFIER, items=[pb.Item(text=sample.text)], request_id=request_id)


async def _metrics(server: RunningServer) -> str:
    async with httpx.AsyncClient(timeout=10) as client:
        return (await client.get(f"{server.http_url}/metrics")).text


async def test_queue_full_is_resource_exhausted(gated: GatedStart, samples: list[Sample]) -> None:
    server, gate = gated(
        batching={"max_batch_size": 1, "max_queue_size": 2, "max_queue_delay_ms": 0},
        instance_groups=[{"kind": "cpu", "count": 1}],
    )
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.FusionServeStub(channel)
        held = [asyncio.ensure_future(stub.Predict(_request(samples[i]), timeout=60)) for i in range(3)]
        await wait_for_metric(server.http_url, "fusionserve_queue_depth", 2, model=CLASSIFIER)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Predict(_request(samples[3]), timeout=60)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_queue_size=2" in (caught.value.details() or "")
        gate.touch()
        assert all(answer.results for answer in await asyncio.gather(*held))
        assert (await stub.Predict(_request(samples[3]), timeout=60)).results


async def test_expired_deadline_is_never_computed(gated: GatedStart, samples: list[Sample]) -> None:
    server, gate = gated(
        batching={"max_batch_size": 1, "max_queue_delay_ms": 0}, instance_groups=[{"kind": "cpu", "count": 1}]
    )
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.FusionServeStub(channel)
        blocker = asyncio.ensure_future(stub.Predict(_request(samples[0]), timeout=60))
        await wait_for_metric(server.http_url, "fusionserve_inflight_requests", 1, protocol="grpc")
        before = metric_value(await _metrics(server), "fusionserve_batch_size_sum", model=CLASSIFIER)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Predict(_request(samples[1]), timeout=0.3)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        gate.touch()
        assert (await blocker).results
        assert (await stub.Predict(_request(samples[2]), timeout=60)).results
    after = metric_value(await _metrics(server), "fusionserve_batch_size_sum", model=CLASSIFIER)
    assert after - before == 2, "the expired row was computed"


async def test_sigterm_drains_grpc(gated: GatedStart, samples: list[Sample]) -> None:
    server, gate = gated(
        batching={"max_batch_size": 2, "max_queue_delay_ms": 0}, instance_groups=[{"kind": "cpu", "count": 1}]
    )
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.FusionServeStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        overall = health_pb2.HealthCheckRequest(service="")
        assert (await health.Check(overall)).status == health_pb2.HealthCheckResponse.SERVING
        accepted = [
            asyncio.ensure_future(stub.Predict(_request(samples[i], str(i)), timeout=60)) for i in range(4)
        ]
        await wait_for_metric(server.http_url, "fusionserve_inflight_requests", 4, protocol="grpc")
        server.proc.send_signal(signal.SIGTERM)
        for _ in range(400):  # state, not time: poll until the drain shows
            if (await health.Check(overall)).status == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            await asyncio.sleep(0.005)
        else:
            raise AssertionError("health never turned NOT_SERVING")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Predict(_request(samples[5]), timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        gate.touch()
        answers = await asyncio.gather(*accepted)
    assert sorted(a.request_id for a in answers) == ["0", "1", "2", "3"]
    assert all(a.results[0].predictions for a in answers)
    assert server.proc.wait(timeout=60) == 0
