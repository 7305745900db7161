"""GPU instances really serve, and answer what CPU instances answer.

Skipped without a CUDA provider (tests/conftest.py). The inputs are made here
(PIL/soundfile), not read from the dataset, so the test needs only the built
model repository: it also runs on a GPU host that cannot build the dataset.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningServer, copy_entry, launch_server

pytestmark = pytest.mark.gpu

GPU_INSTANCES = [{"kind": "gpu", "count": 1, "devices": [0]}]


def request_files(seed: int) -> dict[str, tuple[str | None, bytes | str, str] | tuple[None, str]]:
    """An encoded JPEG, a WAV and a text; different per seed."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(28, 28), dtype=np.uint8)
    jpeg = io.BytesIO()
    Image.fromarray(pixels).save(jpeg, format="JPEG", quality=90)
    t = np.arange(8000) / 16000
    wave = (0.3 * np.sin(2 * np.pi * (200 + 50 * seed) * t)).astype(np.float32)
    wav = io.BytesIO()
    sf.write(wav, wave, 16000, format="WAV", subtype="PCM_16")
    return {
        "image": ("digit.jpg", jpeg.getvalue(), "image/jpeg"),
        "audio": ("digit.wav", wav.getvalue(), "audio/wav"),
        "text": (None, ["zero", "one", "two", "three", "four"][seed % 5]),
    }


@pytest.fixture(scope="module")
def gpu_server(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("gpu-repo")
    for model in ("digits-fusion", "digits-embed"):
        copy_entry(model_repository, repo, model, instance_groups=GPU_INSTANCES)
    server = launch_server(repo, tmp_path_factory.mktemp("gpu-logs"), grpc=False)
    yield server
    server.stop()


def test_gpu_instances_are_on_the_gpu(gpu_server: RunningServer) -> None:
    metrics = httpx.get(f"{gpu_server.http_url}/metrics", timeout=10).text
    gpu_instances = {
        sample.labels["model"]: sample.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "fusionserve_instances"
        for sample in family.samples
        if sample.labels["kind"] == "gpu"
    }
    assert gpu_instances == {"digits-fusion": 1.0, "digits-embed": 1.0}, metrics
    assert "was requested but the session runs on" not in gpu_server.log()


@pytest.mark.parametrize("seed", range(4))
def test_gpu_predictions_match_cpu(
    gpu_server: RunningServer, running_server: RunningServer, seed: int
) -> None:
    answers = []
    for server in (running_server, gpu_server):
        response = httpx.post(
            f"{server.http_url}/v1/models/digits-fusion/predict",
            files={**request_files(seed), "top_k": (None, "10")},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        answers.append({p["label"]: p["score"] for p in response.json()["predictions"]})
    cpu, gpu = answers
    assert cpu.keys() == gpu.keys()
    assert max(abs(cpu[k] - gpu[k]) for k in cpu) < 1e-4


def test_gpu_embeddings_match_cpu(gpu_server: RunningServer, running_server: RunningServer) -> None:
    vectors = []
    for server in (running_server, gpu_server):
        response = httpx.post(
            f"{server.http_url}/v1/models/digits-embed/embed", files=request_files(7), timeout=30
        )
        assert response.status_code == 200, response.text
        vectors.append(np.asarray(response.json()["embedding"]))
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-4)
