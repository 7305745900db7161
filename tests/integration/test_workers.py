"""``--workers 2``: several server processes that answer as one server.

Each test checks something that a wrong multi-process design gets wrong in a
way the test sees: metrics summed from every process (the instance gauge is 2
per process), load/unload reaching every process (the summed instance gauge
reaches 0 and comes back), a killed worker replaced and its live series
dropped, SIGTERM draining requests held in both processes. Compute is held
with the ``gate`` failpoint where a request must stay in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import RunningServer, Sample, copy_entry, launch_server
from tests.integration.test_lifecycle import PREDICT, metric_value, text_part, wait_for_metric

WORKERS = {"FUSIONSERVE_WORKERS": "2", "FUSIONSERVE_MODEL_CONTROL": "explicit"}


def children(pid: int) -> set[int]:
    """Live child processes of ``pid`` (the supervisor's workers)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def metrics(server: RunningServer) -> str:
    return httpx.get(f"{server.http_url}/metrics", timeout=10).text


def wait_until(check: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if check():
                return
        time.sleep(0.02)
    raise AssertionError(f"{check.__name__} never held")


@pytest.fixture(scope="module")
def two_workers(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = launch_server(model_repository, tmp_path_factory.mktemp("workers"), env=WORKERS)
    yield server
    assert server.stop() == 0


def test_two_processes_serve_http_and_grpc(two_workers: RunningServer, samples: list[Sample]) -> None:
    assert len(children(two_workers.proc.pid)) == 2
    for sample in samples[:6]:  # a new connection each: any process may answer
        answer = httpx.post(f"{two_workers.http_url}{PREDICT}", files=text_part(sample), timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"][0]["label"] == sample.label
    with grpc.insecure_channel(two_workers.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_metrics_are_one_coherent_exposition(two_workers: RunningServer, samples: list[Sample]) -> None:
    before = metric_value(metrics(two_workers), "fusionserve_requests_total", model="digits-fusion")
    for sample in samples[:8]:
        httpx.post(f"{two_workers.http_url}{PREDICT}", files=text_part(sample), timeout=30).raise_for_status()
    text = metrics(two_workers)
    after = metric_value(text, "fusionserve_requests_total", model="digits-fusion")
    assert after - before == 8
    # Two CPU instances split over two processes: the gauge is summed, not one process's.
    assert metric_value(text, "fusionserve_instances", model="digits-fusion") == 2
    assert metric_value(text, "fusionserve_model_ready", model="digits-fusion") == 1
    series = [line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")]
    assert len(series) == len(set(series)), "a series appears twice"
    assert not re.search(r'pid="', text), "per-process series leaked"
    instances = set(re.findall(r'model_instance="([^"]+)"', text))
    assert instances and all(re.fullmatch(r"w[01]-\d+", name) for name in instances)
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_unload_and_load_reach_every_process(two_workers: RunningServer, samples: list[Sample]) -> None:
    url = two_workers.http_url
    unloaded = httpx.post(f"{url}/v2/repository/models/digits-embed/unload", timeout=60)
    assert unloaded.status_code == 200, unloaded.text
    assert metric_value(metrics(two_workers), "fusionserve_instances", model="digits-embed") == 0
    for _ in range(4):
        refused = httpx.post(f"{url}/v1/models/digits-embed/embed", files=text_part(samples[0]), timeout=30)
        assert refused.status_code == 503
    loaded = httpx.post(f"{url}/v2/repository/models/digits-embed/load", timeout=120)
    assert loaded.status_code == 200, loaded.text
    assert metric_value(metrics(two_workers), "fusionserve_instances", model="digits-embed") == 2
    wait_until(lambda: httpx.get(f"{url}/health/ready", timeout=5).status_code == 200)
    for _ in range(4):
        answer = httpx.post(f"{url}/v1/models/digits-embed/embed", files=text_part(samples[0]), timeout=30)
        assert answer.status_code == 200, answer.text


def test_a_killed_worker_is_replaced(two_workers: RunningServer, samples: list[Sample]) -> None:
    url = two_workers.http_url
    served_before = metric_value(metrics(two_workers), "fusionserve_requests_total")
    old = children(two_workers.proc.pid)
    victim = min(old)
    os.kill(victim, signal.SIGKILL)

    def not_ready() -> bool:
        return httpx.get(f"{url}/health/ready", timeout=5).status_code == 503

    def replaced_and_ready() -> bool:
        now = children(two_workers.proc.pid)
        return (
            len(now) == 2
            and victim not in now
            and httpx.get(f"{url}/health/ready", timeout=5).status_code == 200
        )

    wait_until(not_ready)  # one process down: the server is not ready
    wait_until(replaced_and_ready)
    text = metrics(two_workers)
    assert metric_value(text, "fusionserve_instances", model="digits-fusion") == 2  # the dead one's are gone
    assert metric_value(text, "fusionserve_requests_total") >= served_before  # its counts are kept
    for sample in samples[:4]:
        httpx.post(f"{url}{PREDICT}", files=text_part(sample), timeout=30).raise_for_status()


async def test_sigterm_drains_every_process(
    tmp_path: Path,
    model_repository: Path,
    server_factory: Callable[..., RunningServer],
    samples: list[Sample],
) -> None:
    gate = tmp_path / "gate"
    gate.touch()  # open while warming up
    repo = copy_entry(
        model_repository,
        tmp_path / "repo",
        "digits-fusion",
        batching={"max_batch_size": 1, "max_queue_delay_ms": 0, "max_queue_size": 5},
        instance_groups=[{"kind": "cpu", "count": 1}],
    )
    server = server_factory(repo, grpc=False, env={**WORKERS, "FUSIONSERVE_FAILPOINTS": f"gate={gate}"})
    # The queue bound holds for the server: 5 over 2 processes is 3 each (6 in all), not 5
    # each; so 3 held requests fit in one process's queue wherever they land.
    assert metric_value(metrics(server), "fusionserve_queue_capacity", model="digits-fusion") == 6
    gate.unlink()  # closed: every compute call now waits
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server.http_url, timeout=60, limits=limits) as client:
        held = [asyncio.create_task(client.post(PREDICT, files=text_part(samples[i]))) for i in range(3)]
        await wait_for_metric(server.http_url, "fusionserve_inflight_requests", 3, protocol="http")
        server.proc.send_signal(signal.SIGTERM)
        for _ in range(1000):
            if (await client.get("/health/ready")).status_code == 503:
                break
            await asyncio.sleep(0.005)
        gate.touch()
        answers = await asyncio.gather(*held)
    assert [a.status_code for a in answers] == [200] * 3
    assert server.proc.wait(timeout=60) == 0
    assert not children(server.proc.pid)


async def test_a_drained_worker_does_not_close_the_door_of_one_still_draining(
    tmp_path: Path,
    model_repository: Path,
    server_factory: Callable[..., RunningServer],
    samples: list[Sample],
) -> None:
    """The listener is shared: while one worker still drains a held request, the other
    (idle, its drain over at once) must not make it refuse new connections. They connect
    and get the drain's 503 + Retry-After until the last worker reaches its close step."""
    gate = tmp_path / "gate"
    gate.touch()
    repo = copy_entry(
        model_repository,
        tmp_path / "repo",
        "digits-fusion",
        batching={"max_batch_size": 1, "max_queue_delay_ms": 0},
        instance_groups=[{"kind": "cpu", "count": 1}],
    )
    server = server_factory(repo, grpc=False, env={**WORKERS, "FUSIONSERVE_FAILPOINTS": f"gate={gate}"})
    gate.unlink()
    # One held request: one worker drains it, the other has nothing to drain.
    async with httpx.AsyncClient(base_url=server.http_url, timeout=60) as client:
        held = asyncio.create_task(client.post(PREDICT, files=text_part(samples[0])))
        await wait_for_metric(server.http_url, "fusionserve_inflight_requests", 1, protocol="http")
        server.proc.send_signal(signal.SIGTERM)
        fresh = httpx.Limits(max_keepalive_connections=0)
        timeout = httpx.Timeout(10, connect=0.5)  # a dropped handshake is retried only after 1 s
        async with httpx.AsyncClient(base_url=server.http_url, timeout=timeout, limits=fresh) as newcomer:
            statuses = []
            ends = time.monotonic() + 1.5
            while time.monotonic() < ends:
                answer = await newcomer.post(PREDICT, files=text_part(samples[1]))
                statuses.append(answer.status_code)
                if answer.status_code == 503:
                    assert answer.headers.get("retry-after") == "1"
                await asyncio.sleep(0.05)
        assert not held.done()
        gate.touch()
        assert (await held).status_code == 200
    assert statuses and set(statuses) == {503}, statuses
    assert server.proc.wait(timeout=60) == 0


def test_workers_that_never_start_stop_the_server(model_repository: Path, tmp_path: Path) -> None:
    """A worker that dies before it is ready, again and again, ends the server (exit 1), as
    one process would, instead of a restart loop forever."""
    env = {**WORKERS, "FUSIONSERVE_TLS_CERT_FILE": str(tmp_path / "absent.pem")}
    env["FUSIONSERVE_TLS_KEY_FILE"] = str(tmp_path / "absent.key")
    server = launch_server(model_repository, tmp_path, wait=False, env=env)
    try:
        assert server.proc.wait(timeout=120) == 1
    finally:
        server.stop()
    assert "before it was ready" in server.log()
    assert not children(server.proc.pid)


def test_workers_die_with_a_killed_supervisor(model_repository: Path, tmp_path: Path) -> None:
    """No orphan keeps serving (and holding the ports) after the supervisor is SIGKILLed."""
    server = launch_server(model_repository, tmp_path, grpc=False, env=WORKERS)
    workers = children(server.proc.pid)
    assert len(workers) == 2
    server.proc.kill()
    server.proc.wait(timeout=30)

    def workers_gone() -> bool:
        return not any(Path(f"/proc/{pid}").exists() and _alive(pid) for pid in workers)

    wait_until(workers_gone, timeout=60)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"
