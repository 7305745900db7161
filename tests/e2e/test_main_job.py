"""The README's main job, end to end: the installed `fusionserve` command serves the default
repository with no arguments, answers real files over HTTP and gRPC, and drains on SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx

from tests.conftest import ROOT, Sample, free_port


def test_fusionserve_serves_the_default_repository(
    model_repository: Path, samples: list[Sample], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copytree(model_repository, home / "model-repository")  # what `serve` builds on first run
    http_port, grpc_port = free_port(), free_port()
    fusionserve = Path(sys.executable).with_name("fusionserve")
    env = {
        **os.environ,
        "FUSIONSERVE_HOME": str(home),
        "FUSIONSERVE_HTTP_PORT": str(http_port),
        "FUSIONSERVE_GRPC_PORT": str(grpc_port),
    }
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen([str(fusionserve), "serve"], cwd=tmp_path, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{http_port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            time.sleep(0.1)
        sample = samples[5]
        (tmp_path / "digit.jpg").write_bytes(sample.jpeg)
        (tmp_path / "digit.wav").write_bytes(sample.wav)
        done = subprocess.run(
            [
                str(fusionserve),
                "predict",
                "--url",
                url,
                "--model",
                "digits-fusion",
                "--image",
                str(tmp_path / "digit.jpg"),
                "--audio",
                str(tmp_path / "digit.wav"),
                "--text",
                sample.text,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(done.stdout)["predictions"][0]["label"] == sample.label
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
            assert status.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        log.close()
    assert code == 0
