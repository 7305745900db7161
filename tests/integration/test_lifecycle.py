"""Load shedding, deadlines, failing instances, broken models and draining, on real servers.

Compute is held with the ``gate`` failpoint (a file whose absence blocks every
model call), so nothing here depends on timing.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningServer, Sample, copy_entry
from tests.reliability.flood import http_request

PREDICT = "/v1/models/digits-fusion/predict"


def text_part(sample: Sample) -> dict:
    return {"text": (None, sample.text)}


def metric_value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def wait_for_metric(url: str, name: str, value: float, **labels: str) -> None:
    """Poll /metrics until a gauge reaches a value (state, not time, decides).

    Uses its own client: sharing the requests' connection pool can starve a request
    that is still waiting for a connection.
    """
    async with httpx.AsyncClient(base_url=url, timeout=10) as probe:
        for _ in range(2000):
            if metric_value((await probe.get("/metrics")).text, name, **labels) >= value:
                return
            await asyncio.sleep(0.005)
    raise AssertionError(f"{name}{labels} never reached {value}")


@pytest.fixture
def gated(tmp_path: Path, model_repository: Path, server_factory: Callable[..., RunningServer]):
    """A server whose compute waits for a gate file; config: one instance, batch 1, queue 2."""

    def start(**config: object) -> tuple[RunningServer, Path]:
        gate = tmp_path / "gate"
        gate.touch()  # open while warming up
        repo = copy_entry(model_repository, tmp_path / "repo", "digits-fusion", **config)
        server = server_factory(repo, grpc=False, env={"FUSIONSERVE_FAILPOINTS": f"gate={gate}"})
        gate.unlink()  # closed: the next compute call blocks
        return server, gate

    return start


async def wait_held(gate: Path) -> None:
    """Until a compute call is blocked at the gate (the failpoint shows it with ``<gate>.held``)."""
    held = gate.with_name(gate.name + ".held")
    for _ in range(4000):
        if held.exists():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("no compute call reached the gate")


async def test_queue_full_sheds_with_429(gated, samples: list[Sample]) -> None:
    server, gate = gated(
        batching={"max_batch_size": 1, "max_queue_size": 2, "max_queue_delay_ms": 0},
        instance_groups=[{"kind": "cpu", "count": 1}],
    )
    async with httpx.AsyncClient(base_url=server.http_url, timeout=60) as client:
        # One row computing (held at the gate), two queued: the queue is full.
        held = [asyncio.create_task(client.post(PREDICT, files=text_part(samples[0])))]
        await wait_held(gate)
        held += [asyncio.create_task(client.post(PREDICT, files=text_part(samples[i]))) for i in (1, 2)]
        await wait_for_metric(server.http_url, "fusionserve_queue_depth", 2, model="digits-fusion")
        shed = await client.post(PREDICT, files=text_part(samples[3]))
        assert shed.status_code == 429, shed.text
        assert "max_queue_size=2" in shed.json()["error"]["message"]
        assert shed.headers["retry-after"]
        gate.touch()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200, 200]
        assert (await client.post(PREDICT, files=text_part(samples[3]))).status_code == 200


def _bounded_server(
    tmp_path: Path, model_repository: Path, server_factory: Callable[..., RunningServer], bound: int
) -> tuple[RunningServer, Path]:
    """A server of one instance whose processes take ``bound`` inference requests; its gate shut."""
    gate = tmp_path / "gate"
    gate.touch()  # open while warming up
    repo = copy_entry(
        model_repository, tmp_path / "repo", "digits-fusion", instance_groups=[{"kind": "cpu", "count": 1}]
    )
    env = {"FUSIONSERVE_FAILPOINTS": f"gate={gate}", "FUSIONSERVE_MAX_INFLIGHT_REQUESTS": str(bound)}
    server = server_factory(repo, grpc=False, env=env)
    gate.unlink()
    return server, gate


async def test_past_max_inflight_requests_the_transport_sheds_with_503(
    tmp_path: Path,
    model_repository: Path,
    server_factory: Callable[..., RunningServer],
    samples: list[Sample],
) -> None:
    """One inference request held in compute fills a process bounded at 1: the next ones get
    503 + Retry-After from the transport, their bodies skipped and their connection kept (the
    client reads the 503, never a reset); other routes still answer."""
    server, gate = _bounded_server(tmp_path, model_repository, server_factory, bound=1)
    v2_body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a seven"]}]}
    async with httpx.AsyncClient(base_url=server.http_url, timeout=60) as client:
        held = asyncio.create_task(client.post(PREDICT, files=text_part(samples[0])))
        await wait_held(gate)
        shed = await client.post(PREDICT, files=text_part(samples[1]))
        shed_v2 = await client.post("/v2/models/digits-fusion/infer", json=v2_body)
        assert shed.status_code == 503, shed.text
        assert shed.headers["retry-after"] == "1" and "connection" not in shed.headers
        assert shed.json()["error"]["code"] == "overloaded"
        assert "max_inflight_requests=1" in shed.json()["error"]["message"]
        assert shed_v2.status_code == 503 and isinstance(shed_v2.json()["error"], str)  # V2's shape
        assert (await client.get("/health/live")).status_code == 200  # only inference is bounded
        metrics = (await client.get("/metrics")).text
        assert metric_value(metrics, "fusionserve_requests_total", outcome="overloaded") == 2
        gate.touch()
        assert (await held).status_code == 200
        assert (await client.post(PREDICT, files=text_part(samples[2]))).status_code == 200


def _text_request(sample: Sample) -> bytes:
    boundary = "bound-test"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="text"\r\n\r\n{sample.text}\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    return http_request(PREDICT, body, f"multipart/form-data; boundary={boundary}")


async def _status(reader: asyncio.StreamReader) -> int:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
    await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


async def test_the_inflight_bound_is_counted_as_headers_arrive_and_never_leaks(
    tmp_path: Path,
    model_repository: Path,
    server_factory: Callable[..., RunningServer],
    samples: list[Sample],
) -> None:
    """Requests arriving together on an idle process bounded at 2: two get in, the rest are
    shed by the transport (no ASGI task: the access log, written for every request the
    application sees, has none of them). A request pipelined behind a held one is counted,
    and its count comes back when its connection closes before it started."""
    server, gate = _bounded_server(tmp_path, model_repository, server_factory, bound=2)
    port = int(server.http_url.rsplit(":", 1)[1])
    request = _text_request(samples[0])

    async def together(count: int) -> tuple[list[asyncio.StreamWriter], list[asyncio.Task[int]]]:
        opened = [await asyncio.open_connection("127.0.0.1", port) for _ in range(count)]
        server.proc.send_signal(signal.SIGSTOP)  # so that one loop iteration reads them all
        try:
            for _, writer in opened:
                writer.write(request)
                await writer.drain()
        finally:
            server.proc.send_signal(signal.SIGCONT)
        return [w for _, w in opened], [asyncio.create_task(_status(r)) for r, _ in opened]

    writers, statuses = await together(8)
    await wait_held(gate)
    done, pending = await asyncio.wait(statuses, timeout=10)
    assert len(pending) == 2, "two requests are in (one computing, one queued)"
    assert sorted(task.result() for task in done) == [503] * 6
    gate.touch()
    assert [await task for task in pending] == [200, 200]
    for writer in writers:
        writer.close()
    seen = [json.loads(line) for line in server.log().splitlines() if f'"path": "{PREDICT}"' in line]
    assert [line["status"] for line in seen] == [200, 200], "a refusal went the expensive way, via the app"

    # A pipelined request behind a held one: counted, then its connection closes first.
    gate.unlink()
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request + request)
    await wait_held(gate)
    writer.close()
    gate.touch()
    await asyncio.sleep(0.5)  # the held one finishes; the pipelined one never starts
    gate.unlink()
    writers, statuses = await together(3)
    await wait_held(gate)
    done, pending = await asyncio.wait(statuses, timeout=10)
    assert len(pending) == 2 and [task.result() for task in done] == [503], "a count leaked"
    gate.touch()
    assert [await task for task in pending] == [200, 200]
    for writer in writers:
        writer.close()


async def test_expired_request_gets_504_and_is_never_computed(gated, samples: list[Sample]) -> None:
    server, gate = gated(
        batching={"max_batch_size": 1, "max_queue_delay_ms": 0}, instance_groups=[{"kind": "cpu", "count": 1}]
    )
    async with httpx.AsyncClient(base_url=server.http_url, timeout=60) as client:
        blocker = asyncio.create_task(client.post(PREDICT, files=text_part(samples[0])))
        await wait_held(gate)
        before = metric_value(
            (await client.get("/metrics")).text, "fusionserve_batch_size_sum", model="digits-fusion"
        )
        late = await client.post(
            PREDICT, files=text_part(samples[1]), headers={"X-Request-Timeout-Ms": "150"}
        )
        assert late.status_code == 504, late.text
        assert "deadline" in late.json()["error"]["message"].lower()
        gate.touch()
        assert (await blocker).status_code == 200
        after = metric_value(
            (await client.get("/metrics")).text, "fusionserve_batch_size_sum", model="digits-fusion"
        )
        assert after - before == 1, "the expired row was computed"


async def test_failing_instance_fails_only_its_batch(
    tmp_path: Path,
    model_repository: Path,
    server_factory: Callable[..., RunningServer],
    samples: list[Sample],
) -> None:
    repo = copy_entry(
        model_repository,
        tmp_path / "repo",
        "digits-fusion",
        batching={"max_batch_size": 1},
        instance_groups=[{"kind": "cpu", "count": 2}],
    )
    # Warm-up runs 2 batches per instance (4 calls); the 5th call, the first request's, raises.
    server = server_factory(repo, grpc=False, env={"FUSIONSERVE_FAILPOINTS": "fail=digits-fusion:5"})
    async with httpx.AsyncClient(base_url=server.http_url, timeout=60) as client:
        # Warm-up consumed 4; the first real request is the one that fails.
        first = await client.post(PREDICT, files=text_part(samples[0]))
        assert first.status_code == 500, first.text
        assert "failpoint" in first.json()["error"]["message"]
        answers = await asyncio.gather(*(client.post(PREDICT, files=text_part(s)) for s in samples[:8]))
        assert all(a.status_code == 200 for a in answers)
        metrics = (await client.get("/metrics")).text
        assert metric_value(metrics, "fusionserve_instance_failures_total", model="digits-fusion") == 1


def test_broken_model_does_not_stop_the_others(
    tmp_path: Path, model_repository: Path, server_factory: Callable[..., RunningServer]
) -> None:
    repo = copy_entry(model_repository, tmp_path / "repo", "digits-fusion")
    copy_entry(model_repository, repo, "digits-embed")
    (repo / "digits-embed" / "config.yaml").write_text("name: digits-embed\ntask: embed\nmodalities: {}\n")
    server = server_factory(repo, grpc=False, wait=False)
    server.wait_live()
    with httpx.Client(base_url=server.http_url, timeout=30) as client:
        for _ in range(600):
            if client.get("/v1/models/digits-fusion/ready").status_code == 200:
                break
            time.sleep(0.1)
        assert client.get("/v1/models/digits-fusion/ready").status_code == 200
        readiness = client.get("/health/ready")
        assert readiness.status_code == 503  # strict: one model failed, and it says which and why
        assert readiness.json()["models"]["digits-embed"].startswith("failed: ")
        assert "modalities" in readiness.json()["models"]["digits-embed"]
        assert "digits-fusion" not in readiness.json()["models"]
        broken = client.get("/v1/models/digits-embed").json()
        assert "config.yaml" in broken["error"] and "modalities" in broken["error"]
        answer = client.post(PREDICT, files={"text": (None, "seven")})
        assert answer.status_code == 200
        unavailable = client.post("/v1/models/digits-embed/embed", files={"text": (None, "seven")})
        assert unavailable.status_code == 503
        metrics = client.get("/metrics").text
        assert metric_value(metrics, "fusionserve_model_load_failures_total", model="digits-embed") >= 1


def test_lenient_readiness_is_ready_with_one_model_loaded(
    tmp_path: Path, model_repository: Path, server_factory: Callable[..., RunningServer]
) -> None:
    """FUSIONSERVE_STRICT_READINESS=false: ready once any model serves; the failed one is still named."""
    repo = copy_entry(model_repository, tmp_path / "repo", "digits-fusion")
    copy_entry(model_repository, repo, "digits-embed")
    (repo / "digits-embed" / "config.yaml").write_text("name: digits-embed\ntask: embed\nmodalities: {}\n")
    server = server_factory(repo, grpc=False, env={"FUSIONSERVE_STRICT_READINESS": "false"})
    assert httpx.get(f"{server.http_url}/health/ready").json() == {"ready": True}
    assert httpx.get(f"{server.http_url}/v1/models/digits-embed").json()["ready"] is False


async def test_sigterm_drains_in_flight_requests(gated, samples: list[Sample]) -> None:
    server, gate = gated(
        batching={"max_batch_size": 2, "max_queue_delay_ms": 0}, instance_groups=[{"kind": "cpu", "count": 1}]
    )
    async with httpx.AsyncClient(base_url=server.http_url, timeout=60) as client:
        accepted = [asyncio.create_task(client.post(PREDICT, files=text_part(samples[i]))) for i in range(5)]
        await wait_for_metric(server.http_url, "fusionserve_inflight_requests", 5, protocol="http")
        server.proc.send_signal(signal.SIGTERM)
        # Draining: new work is refused with 503, health says not ready.
        for _ in range(400):
            if (await client.get("/health/ready")).status_code == 503:
                break
            await asyncio.sleep(0.005)
        refused = await client.post(PREDICT, files=text_part(samples[6]))
        assert refused.status_code == 503, refused.text
        gate.touch()
        answers = await asyncio.gather(*accepted)
    assert [a.status_code for a in answers] == [200] * 5
    assert server.proc.wait(timeout=60) == 0
