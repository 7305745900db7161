"""Bad input over real HTTP: each a clear 4xx naming the problem, and the server keeps serving."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningServer, Sample
from tests.fixtures_media import decompression_bomb_png, digit_like_image, png_bytes, sine, wav_bytes

PREDICT = "/v1/models/digits-fusion/predict"


@pytest.fixture(scope="module")
def client(running_server: RunningServer):
    with httpx.Client(base_url=running_server.http_url, timeout=30) as c:
        yield c


def assert_error(response: httpx.Response, status: int, *needles: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] and error["message"]
    for needle in needles:
        assert needle.lower() in error["message"].lower(), error["message"]


@pytest.fixture(autouse=True)
def still_serving(client: httpx.Client, samples: list[Sample]):
    """After every bad request the server still answers a good one."""
    yield
    good = client.post(PREDICT, files={"text": (None, samples[0].text)})
    assert good.status_code == 200, good.text


def image_part(data: bytes, name: str = "x.jpg") -> dict:
    return {"image": (name, data, "application/octet-stream")}


def test_corrupted_jpeg(client: httpx.Client, samples: list[Sample]) -> None:
    broken = samples[0].jpeg[:20] + bytes(range(256)) * 4
    assert_error(client.post(PREDICT, files=image_part(broken)), 400, "image")


@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_truncated_image(client: httpx.Client, samples: list[Sample], kind: str) -> None:
    data = samples[0].jpeg if kind == "jpeg" else samples[0].png
    assert_error(client.post(PREDICT, files=image_part(data[: len(data) // 2])), 400, "image")


def test_decompression_bomb(client: httpx.Client) -> None:
    assert_error(client.post(PREDICT, files=image_part(decompression_bomb_png(), "bomb.png")), 413, "pixel")


def test_wav_under_image_field(client: httpx.Client, samples: list[Sample]) -> None:
    assert_error(client.post(PREDICT, files=image_part(samples[0].wav, "x.wav")), 415, "image")


def test_image_under_audio_field(client: httpx.Client, samples: list[Sample]) -> None:
    response = client.post(PREDICT, files={"audio": ("x.png", samples[0].png, "audio/wav")})
    assert_error(response, 415, "audio")


def test_truncated_wav(client: httpx.Client, samples: list[Sample]) -> None:
    response = client.post(PREDICT, files={"audio": ("x.wav", samples[0].wav[:30], "audio/wav")})
    assert_error(response, 400, "audio")


def test_audio_over_duration_limit(client: httpx.Client) -> None:
    long_wave = sine(300.0, seconds=40.0, rate=8000)
    response = client.post(
        PREDICT, files={"audio": ("long.wav", wav_bytes(long_wave, rate=8000), "audio/wav")}
    )
    assert_error(response, 413, "second")


def test_wrong_sample_rate_is_resampled(client: httpx.Client) -> None:
    wave = sine(440.0, seconds=0.8, rate=44_100)
    response = client.post(PREDICT, files={"audio": ("x.wav", wav_bytes(wave, rate=44_100), "audio/wav")})
    assert response.status_code == 200, response.text
    assert response.json()["modalities"] == ["audio"]


def test_empty_fields(client: httpx.Client) -> None:
    assert_error(client.post(PREDICT, files={"image": ("x.jpg", b"", "image/jpeg")}), 400, "empty")
    assert_error(client.post(PREDICT, files={"text": (None, "")}), 400, "empty")


def test_text_over_limit(client: httpx.Client) -> None:
    limit = client.get("/v1/models/digits-fusion").json()["modalities"]["text"]["max_chars"]
    assert_error(client.post(PREDICT, files={"text": (None, "seven " * (limit // 6 + 10))}), 413, "max_chars")


def test_no_modality(client: httpx.Client) -> None:
    assert_error(client.post(PREDICT, files={"top_k": (None, "3")}), 422, "no")
    assert_error(client.post(PREDICT, json={}), 422, "no")


def test_unknown_field(client: httpx.Client) -> None:
    response = client.post(PREDICT, files={"text": (None, "seven"), "video": ("v.mp4", b"xx", "video/mp4")})
    assert_error(response, 400, "video")


def test_bad_top_k_and_bad_json(client: httpx.Client) -> None:
    assert_error(client.post(PREDICT, files={"text": (None, "seven"), "top_k": (None, "many")}), 400, "top_k")
    assert_error(
        client.post(PREDICT, content=b"{not json", headers={"content-type": "application/json"}), 400, "json"
    )
    assert_error(client.post(PREDICT, json={"image": "***not base64***"}), 400, "base64")
    assert_error(
        client.post(PREDICT, content=b"seven", headers={"content-type": "text/plain"}), 415, "content-type"
    )


def test_unknown_model_and_path_traversal(client: httpx.Client) -> None:
    assert_error(client.post("/v1/models/nope/predict", files={"text": (None, "seven")}), 404, "nope")
    for name in ("..%2F..%2Fetc", "%2E%2E", "..", "digits-fusion%2F..%2Fdigits-embed"):
        response = client.post(f"/v1/models/{name}/predict", files={"text": (None, "seven")})
        assert response.status_code == 404, (name, response.text)
    assert client.get("/v1/models/..%2F..%2Fetc%2Fpasswd").status_code == 404


def test_embed_on_classifier_is_refused(client: httpx.Client) -> None:
    response = client.post("/v1/models/digits-embed/predict", files={"text": (None, "seven")})
    assert_error(response, 400, "embed")


def test_unknown_route_uses_error_shape(client: httpx.Client) -> None:
    response = client.get("/v1/nothing-here")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_oversized_body(server_factory: Callable[..., RunningServer], model_repository: Path) -> None:
    server = server_factory(model_repository, grpc=False, env={"FUSIONSERVE_MAX_BODY_BYTES": "100000"})
    big = png_bytes(np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8))
    assert len(big) > 100_000
    with httpx.Client(base_url=server.http_url, timeout=30) as c:
        assert_error(c.post(PREDICT, files=image_part(big, "big.png")), 413, "max_body_bytes")
        small = png_bytes(digit_like_image(3))
        assert c.post(PREDICT, files=image_part(small, "small.png")).status_code == 200


def test_client_hanging_up_mid_upload_is_no_server_error(
    client: httpx.Client, running_server: RunningServer
) -> None:
    """A client that closes its connection halfway through the body is counted, not a 500."""

    def cancelled() -> float:
        text = client.get("/metrics").text
        return sum(
            s.value
            for f in text_string_to_metric_families(text)
            if f.name == "fusionserve_requests"
            for s in f.samples
            if s.name.endswith("_total") and s.labels.get("outcome") == "cancelled"
        )

    before = cancelled()
    head = (
        f"POST {PREDICT} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 100000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", running_server.http_port), timeout=10) as sock:
        sock.sendall(head.encode() + b"--xyz\r\nContent-Disposition: form-data; name=")
    deadline = time.monotonic() + 10
    while cancelled() == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cancelled() == before + 1
    log = running_server.log()
    assert "Exception in ASGI application" not in log and "ClientDisconnect" not in log
