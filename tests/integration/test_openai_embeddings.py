"""``POST /v1/embeddings`` driven by the official ``openai`` Python client against a real server."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest

from tests.conftest import RunningServer, Sample
from tests.integration.v2_helpers import CLASSIFIER, EMBEDDER

ATOL = 1e-5


@pytest.fixture(scope="module")
def client(running_server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{running_server.http_url}/v1", api_key="not-needed", max_retries=0)


@pytest.fixture(scope="module")
def native(running_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running_server.http_url, timeout=60) as c:
        yield c


def _native_fused(native: httpx.Client, model: str, **files: tuple) -> np.ndarray:
    response = native.post(f"/v1/models/{model}/embed", files=files)
    assert response.status_code == 200, response.text
    return np.array(response.json()["embedding"])


@pytest.mark.parametrize("encoding_format", ["float", "base64", None])
def test_texts_embed_like_the_native_call(
    client: openai.OpenAI, native: httpx.Client, samples: list[Sample], encoding_format: str | None
) -> None:
    texts = [s.text for s in samples[:3]]
    kwargs = {"encoding_format": encoding_format} if encoding_format else {}  # None: the client's default
    answer = client.embeddings.create(model=EMBEDDER, input=texts, **kwargs)
    assert answer.object == "list" and answer.model == EMBEDDER
    assert [d.index for d in answer.data] == [0, 1, 2]
    assert answer.usage.prompt_tokens > 0 and answer.usage.total_tokens == answer.usage.prompt_tokens
    for text, item in zip(texts, answer.data, strict=True):
        assert item.object == "embedding"
        if encoding_format == "base64":  # asked for by name, the client hands the string over as is
            assert isinstance(item.embedding, str)
            vector = np.frombuffer(base64.b64decode(item.embedding), dtype="<f4")
        else:  # the client's default asks for base64 itself and decodes it
            vector = np.array(item.embedding)
        np.testing.assert_allclose(vector, _native_fused(native, EMBEDDER, text=(None, text)), atol=ATOL)


def test_a_single_string_input(client: openai.OpenAI, samples: list[Sample]) -> None:
    answer = client.embeddings.create(model=EMBEDDER, input=samples[0].text, encoding_format="float")
    assert len(answer.data) == 1 and len(answer.data[0].embedding) == 64


def test_images_and_audio_as_data_urls_land_in_the_same_space(
    client: openai.OpenAI, native: httpx.Client, samples: list[Sample]
) -> None:
    sample = samples[4]
    image = "data:image/png;base64," + base64.b64encode(sample.png).decode()
    audio = "data:audio/wav;base64," + base64.b64encode(sample.wav).decode()
    answer = client.embeddings.create(
        model=EMBEDDER, input=[image, audio, sample.text], encoding_format="float"
    )
    vectors = [np.array(d.embedding) for d in answer.data]
    np.testing.assert_allclose(
        vectors[0], _native_fused(native, EMBEDDER, image=("d.png", sample.png, "image/png")), atol=ATOL
    )
    np.testing.assert_allclose(
        vectors[1], _native_fused(native, EMBEDDER, audio=("d.wav", sample.wav, "audio/wav")), atol=ATOL
    )
    # One digit written, spoken and described: the three vectors agree (joint space).
    assert float(vectors[0] @ vectors[2]) > 0.5 and float(vectors[1] @ vectors[2]) > 0.5


def test_a_classifier_with_embeddings_works_too(client: openai.OpenAI, samples: list[Sample]) -> None:
    answer = client.embeddings.create(model=CLASSIFIER, input=samples[0].text, encoding_format="float")
    assert len(answer.data[0].embedding) == 128


def test_unknown_encoding_format_is_400_naming_the_allowed_values(running_server: RunningServer) -> None:
    response = httpx.post(
        f"{running_server.http_url}/v1/embeddings",
        json={"model": EMBEDDER, "input": "seven", "encoding_format": "int8"},
        timeout=30,
    )
    assert response.status_code == 400
    assert "allowed: ['float', 'base64']" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ({"model": EMBEDDER, "input": []}, "'input' is an empty list"),
        ({"model": EMBEDDER, "input": [[1, 2, 3]]}, "token-id arrays are not supported"),
        ({"model": EMBEDDER, "input": "data:text/plain;base64,aGk="}, "send image/* or audio/*"),
        ({"model": EMBEDDER, "input": "data:image/png;base64,@@@"}, "not valid base64"),
        ({"model": EMBEDDER, "input": "seven", "dimensions": 8}, "cannot shorten them"),
        ({"model": EMBEDDER, "input": "seven", "temperature": 1}, "unknown field 'temperature'"),
    ],
)
def test_bad_requests_are_4xx_with_the_reason(running_server: RunningServer, body: dict, said: str) -> None:
    response = httpx.post(f"{running_server.http_url}/v1/embeddings", json=body, timeout=30)
    assert 400 <= response.status_code < 500
    assert said in response.json()["error"]["message"]


def test_the_client_raises_its_own_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="seven")
    wav_as_png = "data:image/png;base64," + base64.b64encode(b"RIFF\x24\x00\x00\x00WAVEfmt ").decode()
    with pytest.raises(openai.APIStatusError, match="WAV file is not an image") as info:
        client.embeddings.create(model=EMBEDDER, input=wav_as_png)
    assert info.value.status_code == 415  # the sniffed bytes decide, never the data URL's type
