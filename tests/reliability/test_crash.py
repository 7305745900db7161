"""A crash of the whole process (SIGKILL) under load, with ``fusionserve serve`` run under
a restarting supervisor (as systemd ``Restart=always`` or a kubelet would): clients with
retries (``fusionserve.service.client.Retries(inference=True)``) lose no answer."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fusionserve.service.client import AsyncFusionClient, Retries
from tests.conftest import ROOT, free_port
from tests.reliability.helpers import MODEL, figures


class Supervisor:
    """Restarts the server whenever it exits, until stopped; counts the starts."""

    def __init__(self, repository: Path, log_dir: Path) -> None:
        self.port = free_port()
        self.cmd = [
            sys.executable,
            "-m",
            "fusionserve",
            "serve",
            "--model-repository",
            str(repository),
            "--http-port",
            str(self.port),
            "--grpc-port",
            "-1",
        ]
        self.env = {**os.environ, "FUSIONSERVE_SHUTDOWN_GRACE_S": "0"}
        self.log = (log_dir / "supervised.log").open("ab")
        self.starts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._stopping:
                    return
                self.proc = subprocess.Popen(
                    self.cmd, cwd=ROOT, env=self.env, stdout=self.log, stderr=self.log
                )
                self.starts += 1
            self.proc.wait()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    def __enter__(self) -> Supervisor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._stopping = True
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
        self._thread.join(timeout=60)
        self.log.close()


@pytest.fixture
def supervised(model_repository: Path, tmp_path: Path) -> Iterator[Supervisor]:
    with Supervisor(model_repository, tmp_path) as supervisor:
        yield supervisor


async def crash_under_load(supervisor: Supervisor, clients: int, kills: int, per_client: int) -> None:
    url = f"http://127.0.0.1:{supervisor.port}"
    retries = Retries(attempts=200, backoff_s=0.05, max_backoff_s=0.5, inference=True)
    answered = 0
    lost: list[str] = []
    progress = asyncio.Event()

    async def client(index: int) -> None:
        nonlocal answered
        async with AsyncFusionClient(url, timeout=30, retries=retries) as fusion:
            for i in range(per_client):
                try:
                    answer = await fusion.predict(MODEL, text=f"{(index + i) % 10}")
                except Exception as exc:  # every loss counts, whatever its kind
                    lost.append(f"{type(exc).__name__}: {exc}")
                    continue
                assert answer["predictions"]
                answered += 1
                if answered % 20 == 0:
                    progress.set()

    tasks = [asyncio.create_task(client(i)) for i in range(clients)]
    for _ in range(kills):
        progress.clear()
        await asyncio.wait_for(progress.wait(), timeout=300)  # served for a while
        supervisor.kill()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=600)
    figures(
        f"SIGKILL under load, {clients} clients, {kills} kills",
        asked=clients * per_client,
        answered=answered,
        lost=len(lost),
        server_starts=supervisor.starts,
    )
    assert not lost, lost[:5]
    assert answered == clients * per_client
    assert supervisor.starts == kills + 1


async def test_sigkill_under_load_loses_no_answer(supervised: Supervisor) -> None:
    await crash_under_load(supervised, clients=8, kills=1, per_client=25)


@pytest.mark.slow
async def test_sigkill_three_times_under_64_clients(supervised: Supervisor) -> None:
    await crash_under_load(supervised, clients=64, kills=3, per_client=60)
