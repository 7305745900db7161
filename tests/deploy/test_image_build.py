"""The CPU image, built here without a Docker engine, serves real requests (slow: run with -m slow).

Builds the Dockerfile's ``cpu`` target with ``podman build --isolation=chroot``
against a local debootstrap base (every RUN step executed: no layer cache),
exports the image's root filesystem and runs the image's own ENTRYPOINT + CMD
in it under chroot as the image's user (docker/image_check.py does each step).
Needs root, podman and debootstrap; about 5 minutes on two cores, plus the
default model repository (built once by the ``model_repository`` fixture).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.conftest import Sample
from tests.deploy.refs import DOCKER, DOCKERFILE

#: The image build (and the repository fixture, on a first run) outlasts the suite's 300 s default.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

TAG = "localhost/fusionserve:cpu-test"


def load_image_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("image_check", DOCKER / "image_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["image_check"] = module
    spec.loader.exec_module(module)
    return module


image_check = load_image_check()


@dataclass
class Built:
    config: dict[str, Any]
    rootfs: Path
    log: str


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    missing = image_check.tools_missing()
    if missing:
        pytest.skip(f"image build check needs {', '.join(missing)}")
    work = tmp_path_factory.mktemp("image")
    image_check.ensure_base()
    log = image_check.build_image(TAG, log=work / "build.log", no_cache=True)
    config = image_check.image_config(TAG)
    rootfs = image_check.export_rootfs(TAG, work / "rootfs")
    yield Built(config, rootfs, log)
    assert not image_check.mounts_under(work), "a mount was left behind"
    # The tagged image and the untagged stage images of this build take ~1.5 GB.
    subprocess.run(["podman", "rmi", TAG], capture_output=True, check=False)
    subprocess.run(["podman", "image", "prune", "-f"], capture_output=True, check=False)


def test_every_run_step_of_the_cpu_target_executed(built: Built) -> None:
    text = DOCKERFILE.read_text()
    stages = text.split("\nFROM ")
    cpu_stages = [s for s in stages if s.split("\n", 1)[0].endswith((" AS cpu-build", " AS cpu"))]
    runs = sum(stage.count("\nRUN ") for stage in cpu_stages)
    assert runs >= 2
    assert built.log.count(" RUN ") >= runs
    assert "Using cache" not in built.log
    assert "onnxruntime 1." in built.log  # printed by the build stage's own import check


def test_image_config_is_the_documented_contract(built: Built) -> None:
    config = built.config
    assert config["User"] == "10001:10001"
    assert set(config["ExposedPorts"]) == {"8000/tcp", "8001/tcp"}
    assert set(config["Volumes"]) == {"/models"}
    assert config["Entrypoint"] == ["fusionserve"]
    assert config["Cmd"] == ["serve", "--model-repository", "/models"]
    assert config["Healthcheck"]["Test"][0] == "CMD"


def test_cpu_image_carries_onnxruntime_and_no_torch(built: Built) -> None:
    (site,) = built.rootfs.glob("opt/venv/lib/python3*/site-packages")
    assert (site / "onnxruntime").is_dir()
    assert not (site / "torch").exists()
    assert not list(site.glob("onnxruntime_gpu*"))
    generated = site / "fusionserve" / "service" / "grpc" / "generated"
    assert (generated / "descriptors.binpb").is_file()
    assert not (site / "service").exists() and not (site / "models").exists()


def test_image_serves_real_requests_and_drains_on_sigterm(
    built: Built, model_repository: Path, samples: list[Sample], tmp_path: Path
) -> None:
    with image_check.chroot_server(
        built.rootfs, built.config, model_repository, tmp_path / "server.log"
    ) as server:
        assert server.wait_for("/health/live").json() == {"live": True}
        assert server.wait_for("/health/ready").status_code == 200
        assert httpx.get(server.url + "/v2/health/ready", timeout=5).status_code == 200
        model = image_check.first_classifier(server)
        sample = samples[0]
        answer = image_check.predict(
            server, model["name"], {"image": sample.jpeg, "audio": sample.wav}, sample.text
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"][0]["label"]
        health = server.healthcheck()
        assert health.returncode == 0, health.stdout + health.stderr
        metrics = httpx.get(server.url + "/metrics", timeout=5).text
        assert f'model="{model["name"]}"' in metrics and 'outcome="success"' in metrics
        assert server.terminate() == 0, server.log()[-2000:]
