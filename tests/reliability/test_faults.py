"""Faults other than bad input: hung and raising instances, vanishing clients,
endless client timeouts, and a shutdown that must end. Real servers, failpoints
(``service/failpoints.py``) instead of timing wherever a state can be awaited."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx

from fusionserve.service.grpc.generated.fusionserve.v1 import fusionserve_pb2 as pb
from fusionserve.service.grpc.generated.fusionserve.v1 import fusionserve_pb2_grpc as pb_grpc
from tests.conftest import RunningServer, Sample, copy_entry
from tests.reliability.helpers import MODEL, PREDICT, figures, metric_value, start_gated, wait_held

ONE_INSTANCE = {"instance_groups": [{"kind": "cpu", "count": 1}]}


def text(sample: Sample) -> dict:
    return {"text": (None, sample.text)}


async def test_sigterm_with_a_hung_instance_exits_non_zero_within_its_budget(
    tmp_path: Path,
    model_repository: Path,
    server_factory: Callable[..., RunningServer],
    samples: list[Sample],
) -> None:
    """A compute call that never returns must not hold the process for ever (it did: the
    pool joined the thread). The request gets 503; the exit code says work was failed."""
    server, gate = start_gated(
        server_factory,
        model_repository,
        tmp_path,
        env={"FUSIONSERVE_DRAIN_TIMEOUT_S": "1", "FUSIONSERVE_SHUTDOWN_CLOSE_S": "1"},
        batching={"max_queue_delay_ms": 0},
        **ONE_INSTANCE,
    )
    async with httpx.AsyncClient(base_url=server.http_url, timeout=60) as client:
        stuck = asyncio.create_task(client.post(PREDICT, files=text(samples[0])))
        await wait_held(gate)  # the gate is never opened: the call hangs
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        answer = await stuck
    code = await asyncio.to_thread(server.proc.wait, 30)
    took = time.monotonic() - started
    figures("hung instance + SIGTERM", status=answer.status_code, exit=code, seconds=round(took, 2))
    assert answer.status_code == 503, answer.text
    assert code == 1, "a drain that failed work must not exit 0"


async def test_a_hung_instance_fails_its_batch_and_is_replaced(
    tmp_path: Path,
    model_repository: Path,
    server_factory: Callable[..., RunningServer],
    samples: list[Sample],
) -> None:
    # Warm-up makes 2 calls (all modalities, then one per modality in one batch); the 3rd hangs.
    repo = copy_entry(
        model_repository,
        tmp_path / "repo",
        MODEL,
        batching={"max_batch_size": 1, "max_queue_delay_ms": 0},
        instance_groups=[{"kind": "cpu", "count": 1, "timeout_ms": 300}],
    )
    # No stuck thread tolerated: the one left behind turns liveness false (restart me).
    server = server_factory(
        repo,
        grpc=False,
        env={"FUSIONSERVE_FAILPOINTS": f"hang={MODEL}:3", "FUSIONSERVE_MAX_STUCK_THREADS": "0"},
    )
    async with httpx.AsyncClient(base_url=server.http_url, timeout=60) as client:
        assert (await client.get("/health/live")).status_code == 200
        first = await client.post(PREDICT, files=text(samples[0]))
        assert first.status_code == 503, first.text
        message = first.json()["error"]["message"]
        assert "timeout_ms=300" in message and "replaced" in message
        assert first.headers["retry-after"]
        for _ in range(600):  # the replacement loads and warms up
            if (await client.get("/health/ready")).status_code == 200:
                break
            await asyncio.sleep(0.05)
        answers = [await client.post(PREDICT, files=text(s)) for s in samples[:6]]
        metrics = (await client.get("/metrics")).text
        live = await client.get("/health/live")
    restarts = metric_value(metrics, "fusionserve_instance_restarts_total", model=MODEL, reason="timeout")
    stuck = metric_value(metrics, "fusionserve_stuck_threads")
    figures(
        "hung instance replaced",
        first=first.status_code,
        after=[a.status_code for a in answers],
        restarts=restarts,
        stuck_threads=stuck,
        live=(live.status_code, live.json().get("reason")),
    )
    assert [a.status_code for a in answers] == [200] * 6
    assert restarts == 1 and stuck == 1
    assert live.status_code == 503 and "stuck" in live.json()["reason"]
    assert server.stop() == 1  # a thread had to be abandoned at exit


async def test_v2_timeout_parameter_is_bounded_by_the_server(
    tmp_path: Path,
    model_repository: Path,
    server_factory: Callable[..., RunningServer],
    samples: list[Sample],
) -> None:
    """``"timeout": 9000000000000`` (µs, 104 days) held a slot until the compute came back."""
    server, gate = start_gated(
        server_factory,
        model_repository,
        tmp_path,
        env={"FUSIONSERVE_MAX_TIMEOUT_S": "0.5"},
        batching={"max_queue_delay_ms": 0, "max_batch_size": 1},
        **ONE_INSTANCE,
    )

    def body(timeout_us: int) -> dict:
        return {
            "parameters": {"timeout": timeout_us},
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["seven"]}],
        }

    async with httpx.AsyncClient(base_url=server.http_url, timeout=60) as client:
        blocker = asyncio.create_task(client.post(PREDICT, files=text(samples[0])))
        await wait_held(gate)
        absurd = await client.post(f"/v2/models/{MODEL}/infer", json=body(9000000000000))
        late = await client.post(f"/v2/models/{MODEL}/infer", json=body(3_000_000_000))  # 50 min
        figures(
            "V2 timeout 9e12 us and 3e9 us, server max 0.5 s",
            absurd=(absurd.status_code, absurd.text[:100]),
            late=late.status_code,
        )
        # Past what any client may ask (1 h, the parameter's bound): refused at once.
        assert absurd.status_code == 400, absurd.text
        # Within it but past the server's max_timeout_s: answered at the server's bound.
        assert late.status_code == 504, late.text
        gate.touch()
        # The blocker's own (default) timeout is bounded too: it passed while it computed.
        assert (await blocker).status_code == 504


async def test_clients_that_leave_while_queued_are_never_computed(
    tmp_path: Path,
    model_repository: Path,
    server_factory: Callable[..., RunningServer],
    samples: list[Sample],
) -> None:
    """An HTTP client that disconnects and a gRPC call that is cancelled while their rows
    wait in the queue: both rows are withdrawn, never computed, counted as cancelled
    (over HTTP the row was computed and counted a success)."""
    server, gate = start_gated(
        server_factory,
        model_repository,
        tmp_path,
        grpc=True,
        batching={"max_queue_delay_ms": 0, "max_batch_size": 1},
        **ONE_INSTANCE,
    )

    async def depth_reaches(client: httpx.AsyncClient, value: float) -> float:
        depth = -1.0
        for _ in range(2000):
            depth = metric_value((await client.get("/metrics")).text, "fusionserve_queue_depth")
            if depth == value:
                break
            await asyncio.sleep(0.005)
        return depth

    async with httpx.AsyncClient(base_url=server.http_url, timeout=60) as client:
        blocker = asyncio.create_task(client.post(PREDICT, files=text(samples[0])))
        await wait_held(gate)
        async with httpx.AsyncClient(base_url=server.http_url, timeout=60) as leaving:
            queued = asyncio.create_task(leaving.post(PREDICT, files=text(samples[1])))
            assert await depth_reaches(client, 1) == 1
            queued.cancel()  # the client gives up: its connection closes
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            stub = pb_grpc.FusionServeStub(channel)
            call = stub.Predict(pb.PredictRequest(model=MODEL, items=[pb.Item(text=samples[2].text)]))
            for _ in range(2000):
                metrics = (await client.get("/metrics")).text
                if metric_value(metrics, "fusionserve_inflight_requests", protocol="grpc") == 1:
                    break
                await asyncio.sleep(0.005)
            call.cancel()
        for _ in range(2000):
            metrics = (await client.get("/metrics")).text
            if metric_value(metrics, "fusionserve_requests_total", model=MODEL, outcome="cancelled") == 2:
                break
            await asyncio.sleep(0.005)
        depth = metric_value(metrics, "fusionserve_queue_depth")
        gate.touch()
        assert (await blocker).status_code == 200
        metrics = (await client.get("/metrics")).text
    cancelled = {
        door: metric_value(
            metrics, "fusionserve_requests_total", model=MODEL, protocol=door, outcome="cancelled"
        )
        for door in ("http", "grpc")
    }
    computed = metric_value(metrics, "fusionserve_batch_size_sum", model=MODEL)
    successes = metric_value(metrics, "fusionserve_requests_total", model=MODEL, outcome="success")
    figures("clients gone while queued", cancelled=cancelled, rows_computed=computed, successes=successes)
    assert cancelled == {"http": 1, "grpc": 1} and depth == 0
    assert computed == 1 and successes == 1, "an abandoned row was computed"


async def test_grpc_calls_cancelled_between_decode_and_queue_leave_no_announced_rows(
    model_repository: Path,
    server_factory: Callable[..., RunningServer],
    samples: list[Sample],
) -> None:
    """Two-item Predict calls with a client deadline of 2 ms: many are cancelled mid-way.
    Announced rows must all be withdrawn (they leaked, and every later lone request then
    waited max_queue_delay_ms)."""
    server = server_factory(model_repository, grpc=True)
    item = pb.Item(text=samples[0].text)
    calls = 300
    outcomes: dict[str, int] = {}
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.FusionServeStub(channel)
        await stub.Predict(pb.PredictRequest(model=MODEL, items=[item]), timeout=30)

        async def one() -> None:
            try:
                await stub.Predict(pb.PredictRequest(model=MODEL, items=[item, item]), timeout=0.002)
                key = "OK"
            except grpc.aio.AioRpcError as exc:
                key = exc.code().name
            outcomes[key] = outcomes.get(key, 0) + 1

        for start in range(0, calls, 50):
            await asyncio.gather(*(one() for _ in range(min(50, calls - start))))
    async with httpx.AsyncClient(base_url=server.http_url, timeout=30) as client:
        announced = -1.0
        for _ in range(400):  # calls still finishing server-side settle within moments
            metrics = (await client.get("/metrics")).text
            announced = metric_value(metrics, "fusionserve_batcher_announced_rows", model=MODEL)
            if announced == 0:
                break
            await asyncio.sleep(0.01)
    figures("gRPC 2-item calls with 2 ms deadlines", calls=calls, outcomes=outcomes, announced_left=announced)
    assert announced == 0


async def test_slow_warmup_broken_model_file_and_vanishing_repository(
    tmp_path: Path,
    model_repository: Path,
    server_factory: Callable[..., RunningServer],
    samples: list[Sample],
) -> None:
    """One server, three faults: a model that takes long to load (ready says why and
    liveness holds), a model file that does not load (the other model serves), and the
    repository directory removed under a running server (serving goes on; a load call
    gets a clear error)."""
    repo = copy_entry(model_repository, tmp_path / "repo", MODEL)
    copy_entry(model_repository, repo, "digits-embed")
    (repo / "digits-embed" / "1" / "model.onnx").write_bytes(b"not an onnx graph")
    server = server_factory(
        repo,
        grpc=False,
        wait=False,
        env={"FUSIONSERVE_FAILPOINTS": f"slow_load={MODEL}:1500", "FUSIONSERVE_MODEL_CONTROL": "explicit"},
    )
    server.wait_live()
    async with httpx.AsyncClient(base_url=server.http_url, timeout=60) as client:
        loading = await client.get("/health/ready")
        live_while_loading = (await client.get("/health/live")).status_code
        for _ in range(1200):
            if (await client.get(f"/v1/models/{MODEL}/ready")).status_code == 200:
                break
            await asyncio.sleep(0.05)
        ready = await client.get("/health/ready")
        broken = (await client.get("/v1/models/digits-embed")).json()
        served = await client.post(PREDICT, files=text(samples[0]))
        refused = await client.post("/v1/models/digits-embed/embed", files=text(samples[0]))
        shutil.rmtree(repo)
        after_vanish = await client.post(PREDICT, files=text(samples[1]))
        reload = await client.post(f"/v2/repository/models/{MODEL}/load", json={})
        still = await client.post(PREDICT, files=text(samples[2]))
        live = await client.get("/health/live")
    figures(
        "slow warm-up, broken model file, vanished repository",
        loading=(loading.status_code, loading.json().get("reasons")),
        live_while_loading=live_while_loading,
        ready_reasons=ready.json().get("reasons"),
        served=served.status_code,
        broken_model=refused.status_code,
        after_vanish=after_vanish.status_code,
        load_after_vanish=(reload.status_code, reload.text[:120]),
        still=still.status_code,
        live=live.status_code,
    )
    assert loading.status_code == 503 and live_while_loading == 200
    assert any("loading" in r for r in loading.json()["reasons"])
    assert ready.status_code == 503 and any("digits-embed" in r for r in ready.json()["reasons"])
    assert "FAILED" in {v["state"] for v in broken["versions"]}
    assert served.status_code == 200 and refused.status_code == 503
    assert after_vanish.status_code == 200
    assert 400 <= reload.status_code < 600 and reload.status_code != 500, reload.text
    assert still.status_code in (200, 503) and live.status_code == 200
