"""Browser and phone uploads reach the model: MP3, WebM/Opus, M4A, HEIC and AVIF over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import soundfile as sf

from fusionserve.service.preprocess import image as image_module
from fusionserve.service.preprocess import media
from tests.conftest import RunningServer, Sample
from tests.fixtures_media import av_audio_bytes, avif_bytes, heif_bytes, mp3_bytes
from tests.integration.v2_helpers import CLASSIFIER

NO_EXTRA = "needs the media extra: pip install 'fusionserve[media]'"


@pytest.fixture(scope="module")
def client(running_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running_server.http_url, timeout=60) as c:
        yield c


def _wave(sample: Sample) -> tuple[np.ndarray, int]:
    import io

    wave, rate = sf.read(io.BytesIO(sample.wav), dtype="float32")
    return wave, rate


def _top(client: httpx.Client, **files: tuple) -> str:
    response = client.post(f"/v1/models/{CLASSIFIER}/predict", files=files)
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]["label"]


def _reference(client: httpx.Client, sample: Sample) -> str:
    return _top(client, audio=("d.wav", sample.wav, "audio/wav"))


def test_an_mp3_of_a_spoken_digit_is_understood(client: httpx.Client, samples: list[Sample]) -> None:
    sample = samples[3]
    wave, rate = _wave(sample)
    assert _top(client, audio=("d.mp3", mp3_bytes(wave, rate), "audio/mpeg")) == _reference(client, sample)


@pytest.mark.skipif(not media.HAVE_AV, reason=NO_EXTRA)
@pytest.mark.parametrize(
    ("container", "codec", "rate"),
    [("webm", "libopus", 48_000), ("ipod", "aac", 44_100)],
    ids=["webm", "m4a"],
)
def test_browser_recordings_are_understood(
    client: httpx.Client, samples: list[Sample], container: str, codec: str, rate: int
) -> None:
    import soxr

    sample = samples[5]
    wave, source_rate = _wave(sample)
    resampled = soxr.resample(wave, source_rate, rate)
    data = av_audio_bytes(resampled, rate, container, codec)
    assert _top(client, audio=("rec", data, "application/octet-stream")) == _reference(client, sample)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            heif_bytes, marks=pytest.mark.skipif("heif" not in image_module._DECODABLE, reason=NO_EXTRA)
        ),
        pytest.param(
            avif_bytes, marks=pytest.mark.skipif("avif" not in image_module._DECODABLE, reason=NO_EXTRA)
        ),
    ],
    ids=["heic", "avif"],
)
def test_phone_photos_are_understood(client: httpx.Client, samples: list[Sample], make) -> None:
    from io import BytesIO

    from PIL import Image

    sample = samples[6]
    pixels = np.asarray(Image.open(BytesIO(sample.png)).convert("RGB").resize((112, 112)))
    png = _top(client, image=("d.png", sample.png, "image/png"))
    assert _top(client, image=("photo", make(pixels), "image/heic")) == png


def test_a_file_of_one_kind_under_the_other_field_is_415_naming_both(
    client: httpx.Client, samples: list[Sample]
) -> None:
    wave, rate = _wave(samples[0])
    response = client.post(
        f"/v1/models/{CLASSIFIER}/predict", files={"image": ("x.jpg", mp3_bytes(wave, rate), "image/jpeg")}
    )
    assert response.status_code == 415
    assert "field 'image': an MP3 file is not an image" in response.json()["error"]["message"]


@pytest.mark.skipif(not media.HAVE_AV, reason=NO_EXTRA)
def test_a_truncated_recording_is_400(client: httpx.Client, samples: list[Sample]) -> None:
    import soxr

    wave, rate = _wave(samples[0])
    data = av_audio_bytes(soxr.resample(np.tile(wave, 2), rate, 48_000), 48_000, "webm", "libopus")
    response = client.post(
        f"/v1/models/{CLASSIFIER}/predict",
        files={"audio": ("rec.webm", data[: len(data) // 3], "audio/webm")},
    )
    assert response.status_code == 400
    assert "field 'audio'" in response.json()["error"]["message"]
