"""Prometheus exposition (checked by promtool), the Python client and the predict CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from fusionserve.service.client import AsyncFusionClient, FusionClient, FusionClientError
from tests.conftest import ROOT, RunningServer, Sample

FAMILIES = [
    "fusionserve_requests_total",
    "fusionserve_request_duration_seconds",
    "fusionserve_queue_duration_seconds",
    "fusionserve_decode_duration_seconds",
    "fusionserve_compute_duration_seconds",
    "fusionserve_postprocess_duration_seconds",
    "fusionserve_batch_size",
    "fusionserve_padding_ratio",
    "fusionserve_queue_depth",
    "fusionserve_inflight_requests",
    "fusionserve_model_ready",
    "fusionserve_instances",
    "fusionserve_instance_busy_seconds_total",
]


def test_metrics_pass_promtool(running_server: RunningServer, samples: list[Sample]) -> None:
    with FusionClient(running_server.http_url) as client:
        client.predict("digits-fusion", image=samples[0].jpeg, audio=samples[0].wav, text=samples[0].text)
    text = httpx.get(f"{running_server.http_url}/metrics").text
    for family in FAMILIES:
        assert f"# TYPE {family} " in text, family
    assert 'fusionserve_decode_duration_seconds_count{modality="image"}' in text
    assert 'outcome="success"' in text and 'protocol="http"' in text
    # Per modality: the subset carried, bytes received, what the model was fed.
    assert 'fusionserve_modality_requests_total{modalities="image+audio+text",model="digits-fusion"}' in text
    assert 'fusionserve_received_bytes_total{modality="audio"}' in text
    for family in ("input_image_pixels", "input_audio_seconds", "input_text_tokens"):
        assert f"fusionserve_{family}_count" in text
    assert "fusionserve_build_info{" in text and 'version="' in text
    assert "# TYPE process_resident_memory_bytes gauge" in text
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (scripts/setup.sh --dev installs it)")
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_sync_client(running_server: RunningServer, samples: list[Sample], tmp_path: Path) -> None:
    image = tmp_path / "digit.png"
    image.write_bytes(samples[2].png)
    with FusionClient(running_server.http_url) as client:
        answer = client.predict(
            "digits-fusion", image=image, audio=samples[2].wav, text=samples[2].text, top_k=2
        )
        assert answer["predictions"][0]["label"] == samples[2].label and len(answer["predictions"]) == 2
        assert client.ready()
        assert "digits-embed" in {m["name"] for m in client.models()["models"]}
        with pytest.raises(FusionClientError) as info:
            client.predict("no-such-model", text="seven")
        assert info.value.status == 404 and info.value.code == "not_found"
        with pytest.raises(ValueError):
            client.predict("digits-fusion")


async def test_async_client(running_server: RunningServer, samples: list[Sample]) -> None:
    async with AsyncFusionClient(running_server.http_url) as client:
        answer = await client.embed("digits-embed", image=samples[3].jpeg, text=samples[3].text)
        assert set(answer["embeddings"]) == {"image", "text"}
        assert await client.ready()


def test_predict_cli(running_server: RunningServer, samples: list[Sample], tmp_path: Path) -> None:
    (tmp_path / "d.jpg").write_bytes(samples[4].jpeg)
    (tmp_path / "d.wav").write_bytes(samples[4].wav)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fusionserve",
            "predict",
            "--url",
            running_server.http_url,
            "--model",
            "digits-fusion",
            "--image",
            str(tmp_path / "d.jpg"),
            "--audio",
            str(tmp_path / "d.wav"),
            "--text",
            samples[4].text,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    answer = json.loads(done.stdout)
    assert answer["predictions"][0]["label"] == samples[4].label
    failed = subprocess.run(
        [
            sys.executable,
            "-m",
            "fusionserve",
            "predict",
            "--url",
            running_server.http_url,
            "--model",
            "nope",
            "--text",
            "seven",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 1 and "404" in failed.stderr
