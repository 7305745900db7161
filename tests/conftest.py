"""Shared fixtures: the real default model repository, real servers, real media.

Integration and e2e tests start ``fusionserve serve`` as a subprocess on
127.0.0.1 and poll its readiness endpoint — never a log line — before use.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from fusionserve.service.config import default_repository_dir, default_repository_is_current
from fusionserve.service.logs import ACCESS_LOG_FLUSH_S

ROOT = Path(__file__).resolve().parent.parent

# One server process per test server unless a test asks for more
# (tests/integration/test_workers.py): the suite starts many servers on small
# machines, and `serve` defaults to one process per core.
os.environ.setdefault("FUSIONSERVE_WORKERS", "1")


def _cuda_available() -> bool:
    try:
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except ImportError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none here)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip_gpu)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def model_repository() -> Path:
    """The bundled default repository (digits-fusion, digits-embed), built once if missing."""
    repo = default_repository_dir()
    if not default_repository_is_current(repo):  # missing, or built by older code: build-repo updates it
        subprocess.run(
            [sys.executable, "-m", "fusionserve", "build-repo", "--out", str(repo)], cwd=ROOT, check=True
        )
    return repo


@dataclass
class RunningServer:
    proc: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int | None
    log_path: Path

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        """Everything logged so far, access lines included: a running server writes those
        in batches (``BatchedAccessHandler``), so wait out one batch first."""
        if self.proc.poll() is None:
            time.sleep(ACCESS_LOG_FLUSH_S + 0.1)
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.log()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.http_url}/health/ready", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"server not ready in {timeout} s:\n{self.log()[-4000:]}")

    def wait_live(self, timeout: float = 60.0) -> None:
        """Until the listener answers (models may still be loading)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.log()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.http_url}/health/live", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"server not live in {timeout} s")

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def launch_server(
    repository: Path,
    log_dir: Path,
    *,
    grpc: bool = True,
    wait: bool = True,
    env: dict[str, str] | None = None,
) -> RunningServer:
    http_port = free_port()
    grpc_port = free_port() if grpc else None
    log_path = log_dir / f"server-{http_port}.log"
    cmd = [
        sys.executable,
        "-m",
        "fusionserve",
        "serve",
        "--model-repository",
        str(repository),
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port if grpc else -1),
    ]
    # No shutdown grace period unless a test asks for one: most tests stop their
    # server with nobody sending, and the grace would only add seconds.
    full_env = {
        **os.environ,
        "FUSIONSERVE_LOG_FORMAT": "json",
        "FUSIONSERVE_SHUTDOWN_GRACE_S": "0",
        **(env or {}),
    }
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT)
    server = RunningServer(proc, http_port, grpc_port, log_path)
    if wait:
        try:
            server.wait_ready()
        except BaseException:
            server.stop()
            raise
    return server


@pytest.fixture(scope="session")
def running_server(
    model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """One shared server on the default repository (HTTP + gRPC).

    It runs with ``--model-control explicit`` (no admin token, loopback only) so
    tests of the repository extension can load and unload; tests of the closed
    default start a server of their own (``tests/security/``).
    """
    server = launch_server(
        model_repository,
        tmp_path_factory.mktemp("server-logs"),
        env={"FUSIONSERVE_MODEL_CONTROL": "explicit"},
    )
    yield server
    server.stop()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Start extra servers (own config) for one test; all are stopped afterwards."""
    started: list[RunningServer] = []

    def start(repository: Path, **kwargs: Any) -> RunningServer:
        server = launch_server(repository, tmp_path, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def copy_entry(model_repository: Path, dest: Path, model: str, **config_changes: Any) -> Path:
    """A one-model repository copied from the default one, with config fields overridden.

    Nested mappings merge (``batching={"max_batch_size": 1}`` changes only that key).
    """
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(model_repository / model, dest / model)
    path = dest / model / "config.yaml"
    config = yaml.safe_load(path.read_text())
    for key, value in config_changes.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


@dataclass
class Sample:
    """One real test-split row as encoded files."""

    label: str
    text: str
    png: bytes
    jpeg: bytes
    wav: bytes


@pytest.fixture(scope="session")
def samples(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    """Twelve real rows of the dataset's test split (built together with the repository)."""
    from fusionserve.models.data.dataset import build_dataset
    from fusionserve.models.samples import write_sample_files

    dataset = build_dataset(seed=0)
    out = tmp_path_factory.mktemp("samples")
    rows = []
    for i in range(12):
        files = write_sample_files(dataset.test, i, out / str(i))
        rows.append(
            Sample(
                label=dataset.labels[int(dataset.test.label[i])],
                text=dataset.test.text[i],
                png=files["image.png"].read_bytes(),
                jpeg=files["image.jpg"].read_bytes(),
                wav=files["audio.wav"].read_bytes(),
            )
        )
    return rows


@pytest.fixture(scope="session")
def token_server(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A second shared server: digits-embed alone, behind an API token (``s3cret``), no gRPC,
    with repository load/unload allowed (``--model-control explicit``, loopback only).

    For tests that need a token, or that unload and reload its model (they load it back).
    """
    root = tmp_path_factory.mktemp("token-server")
    repository = copy_entry(model_repository, root / "repo", "digits-embed")
    env = {"FUSIONSERVE_API_TOKEN": "s3cret", "FUSIONSERVE_MODEL_CONTROL": "explicit"}
    server = launch_server(repository, root, grpc=False, env=env)
    yield server
    server.stop()
