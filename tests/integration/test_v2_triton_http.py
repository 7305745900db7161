"""V2 over REST driven by tritonclient's HTTP client: JSON and the binary tensor extension.

Real server (``fusionserve serve``), real JPEG/WAV files from the dataset's
test split, real text.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import RunningServer, Sample
from tests.integration.v2_helpers import (
    CLASSIFIER,
    EMBEDDER,
    check_classes,
    decoded_audio,
    decoded_image,
    object_column,
)


@pytest.fixture(scope="module")
def client(running_server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    triton = httpclient.InferenceServerClient(f"127.0.0.1:{running_server.http_port}", network_timeout=60)
    yield triton
    triton.close()


def _bytes_input(name: str, values: list[bytes], binary: bool = True) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, [len(values)], "BYTES")
    tensor.set_data_from_numpy(object_column(values), binary_data=binary)
    return tensor


def _file_inputs(rows: list[Sample], binary: bool = True) -> list[httpclient.InferInput]:
    return [
        _bytes_input("image", [s.jpeg for s in rows], binary),
        _bytes_input("audio", [s.wav for s in rows], binary),
        _bytes_input("text", [s.text.encode() for s in rows], binary),
    ]


def test_health_and_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(CLASSIFIER) and client.is_model_ready(CLASSIFIER, "1")
    assert not client.is_model_ready(CLASSIFIER, "999")  # unknown version: 404, so not ready
    server = client.get_server_metadata()
    assert server["name"] == "fusionserve" and "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata(CLASSIFIER)
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        ("image", "BYTES", [-1]),
        ("audio", "BYTES", [-1]),
        ("text", "BYTES", [-1]),
    ]
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [
        ("probabilities", "FP32", [-1, 10]),
        ("labels", "BYTES", [-1, -1]),
        ("scores", "FP32", [-1, -1]),
        # answered only when named in the request (tests/integration/test_predict_include.py)
        ("fused_embedding", "FP32", [-1, 128]),
        ("image_embedding", "FP32", [-1, 64]),
        ("audio_embedding", "FP32", [-1, 64]),
        ("text_embedding", "FP32", [-1, 64]),
        ("modality_attribution", "FP32", [-1, 30]),
    ]


def test_binary_infer_with_real_files(
    client: httpclient.InferenceServerClient, samples: list[Sample]
) -> None:
    rows = samples[:4]
    outputs = [
        httpclient.InferRequestedOutput(n, binary_data=True) for n in ("labels", "scores", "probabilities")
    ]
    result = client.infer(
        CLASSIFIER, _file_inputs(rows), outputs=outputs, parameters={"top_k": 3}, request_id="b1"
    )
    labels, scores, probs = (result.as_numpy(n) for n in ("labels", "scores", "probabilities"))
    assert result.get_response()["id"] == "b1"
    assert labels.shape == (4, 3) and scores.shape == (4, 3) and probs.shape == (4, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    for row in range(4):
        assert scores[row, 0] == pytest.approx(probs[row].max(), abs=1e-6)
        assert labels[row, 0].decode() == str(int(np.argmax(probs[row])))
        assert list(scores[row]) == sorted(scores[row], reverse=True)


@pytest.mark.parametrize("binary", [True, False])
def test_classification_extension(
    client: httpclient.InferenceServerClient, samples: list[Sample], binary: bool
) -> None:
    """``class_count`` on an output: its top classes as ``value:index:label`` strings."""
    outputs = [
        httpclient.InferRequestedOutput("probabilities", binary_data=binary, class_count=3),
        httpclient.InferRequestedOutput("scores", binary_data=binary),
    ]
    rows = _file_inputs(samples[:4])
    result = client.infer(CLASSIFIER, rows, outputs=outputs, parameters={"top_k": 10})
    plain = client.infer(CLASSIFIER, rows).as_numpy("probabilities")
    check_classes(result.as_numpy("probabilities"), plain, 3)
    # The other output is untouched; a count above the width returns the whole row.
    assert result.as_numpy("scores").shape == (4, 10)
    wide = [httpclient.InferRequestedOutput("probabilities", binary_data=binary, class_count=50)]
    check_classes(client.infer(CLASSIFIER, rows, outputs=wide).as_numpy("probabilities"), plain, 10)
    assert "classification" in client.get_server_metadata()["extensions"]


@pytest.mark.parametrize(("request_coding", "response_coding"), [("gzip", "gzip"), ("deflate", "deflate")])
def test_compressed_requests_and_answers(
    client: httpclient.InferenceServerClient, samples: list[Sample], request_coding: str, response_coding: str
) -> None:
    """tritonclient's request/response compression: the same answer as uncompressed."""
    rows = _file_inputs(samples[:3])
    plain = client.infer(CLASSIFIER, rows, parameters={"top_k": 3})
    squeezed = client.infer(
        CLASSIFIER,
        rows,
        parameters={"top_k": 3},
        request_compression_algorithm=request_coding,
        response_compression_algorithm=response_coding,
    )
    np.testing.assert_array_equal(squeezed.as_numpy("labels"), plain.as_numpy("labels"))
    np.testing.assert_allclose(squeezed.as_numpy("probabilities"), plain.as_numpy("probabilities"), atol=1e-6)


@pytest.mark.parametrize(
    ("encoding", "body", "status", "message"),
    [
        ("br", b"{}", 415, "Content-Encoding 'br' is not supported"),
        ("gzip", b"{not gzip}", 400, "not valid gzip data"),
    ],
)
def test_bad_content_codings(
    running_server: RunningServer, encoding: str, body: bytes, status: int, message: str
) -> None:
    url = f"{running_server.http_url}/v2/models/{CLASSIFIER}/infer"
    answer = httpx.post(url, content=body, headers={"Content-Encoding": encoding}, timeout=30)
    assert answer.status_code == status and message in answer.json()["error"]


def test_compressed_answer_is_labelled(running_server: RunningServer) -> None:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a four"]}]}
    url = f"{running_server.http_url}/v2/models/{CLASSIFIER}/infer"
    # httpx would decode it itself: read the raw stream.
    with httpx.stream("POST", url, json=body, headers={"Accept-Encoding": "gzip"}, timeout=30) as answer:
        raw = b"".join(answer.iter_raw())
        assert answer.headers["content-encoding"] == "gzip"
        assert answer.headers["vary"] == "Accept-Encoding"
    assert raw[:2] == b"\x1f\x8b"


def test_json_and_binary_text_give_the_same_answer(
    client: httpclient.InferenceServerClient, samples: list[Sample]
) -> None:
    texts = [s.text.encode() for s in samples[:3]]
    as_json = client.infer(CLASSIFIER, [_bytes_input("text", texts, binary=False)], parameters={"top_k": 2})
    as_binary = client.infer(CLASSIFIER, [_bytes_input("text", texts, binary=True)], parameters={"top_k": 2})
    np.testing.assert_array_equal(as_json.as_numpy("labels"), as_binary.as_numpy("labels"))
    np.testing.assert_allclose(as_json.as_numpy("scores"), as_binary.as_numpy("scores"), atol=1e-6)


def test_base64_files_in_plain_json(running_server: RunningServer, samples: list[Sample]) -> None:
    """The curl path: files as base64 strings with ``content_type: base64`` (no client library)."""
    import base64

    sample = samples[0]
    body = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"content_type": "base64"},
                "data": [base64.b64encode(sample.jpeg).decode()],
            },
            {"name": "text", "datatype": "BYTES", "shape": [1], "data": [sample.text]},
        ],
        "parameters": {"top_k": 3},
    }
    answer = httpx.post(f"{running_server.http_url}/v2/models/{CLASSIFIER}/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    assert outputs["labels"]["shape"] == [1, 3] and len(outputs["probabilities"]["data"]) == 10


def test_decoded_tensors_in_json_match_encoded_files(
    client: httpclient.InferenceServerClient, samples: list[Sample]
) -> None:
    """UINT8 [B,H,W,3] and FP32 [B,T] in JSON answer as the PNG/WAV files they came from."""
    sample = samples[0]
    image = decoded_image(sample.png)[np.newaxis]
    audio = decoded_audio(sample.wav)[np.newaxis]
    image_in = httpclient.InferInput("image", list(image.shape), "UINT8")
    image_in.set_data_from_numpy(image, binary_data=False)
    audio_in = httpclient.InferInput("audio", list(audio.shape), "FP32")
    audio_in.set_data_from_numpy(audio, binary_data=False)
    decoded = client.infer(CLASSIFIER, [image_in, audio_in], parameters={"top_k": 10})
    encoded = client.infer(
        CLASSIFIER,
        [_bytes_input("image", [sample.png]), _bytes_input("audio", [sample.wav])],
        parameters={"top_k": 10},
    )
    np.testing.assert_array_equal(decoded.as_numpy("labels"), encoded.as_numpy("labels"))
    np.testing.assert_allclose(
        decoded.as_numpy("probabilities"), encoded.as_numpy("probabilities"), atol=1e-5
    )


def test_rows_may_leave_out_different_modalities(
    client: httpclient.InferenceServerClient, samples: list[Sample]
) -> None:
    """An empty BYTES element masks that modality for that row only; rows batch together."""
    a, b = samples[0], samples[1]
    mixed = client.infer(
        CLASSIFIER,
        [_bytes_input("image", [a.jpeg, b""]), _bytes_input("text", [b"", b.text.encode()])],
        parameters={"top_k": 10},
    )
    image_only = client.infer(CLASSIFIER, [_bytes_input("image", [a.jpeg])], parameters={"top_k": 10})
    text_only = client.infer(CLASSIFIER, [_bytes_input("text", [b.text.encode()])], parameters={"top_k": 10})
    probs = mixed.as_numpy("probabilities")
    np.testing.assert_allclose(probs[0], image_only.as_numpy("probabilities")[0], atol=1e-5)
    np.testing.assert_allclose(probs[1], text_only.as_numpy("probabilities")[0], atol=1e-5)


def test_embedding_model_outputs(client: httpclient.InferenceServerClient, samples: list[Sample]) -> None:
    rows = samples[:3]
    result = client.infer(
        EMBEDDER,
        [
            _bytes_input("image", [s.jpeg for s in rows]),
            _bytes_input("text", [s.text.encode() for s in rows]),
        ],
    )
    names = {o["name"] for o in result.get_response()["outputs"]}
    assert names == {"fused_embedding", "image_embedding", "text_embedding"}
    fused = result.as_numpy("fused_embedding")
    assert fused.shape[0] == 3 and fused.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1.0, atol=1e-4)


def test_repository_and_statistics(client: httpclient.InferenceServerClient, samples: list[Sample]) -> None:
    client.infer(CLASSIFIER, [_bytes_input("text", [samples[0].text.encode()])])
    index = {(e["name"], e.get("version")): e["state"] for e in client.get_model_repository_index()}
    assert index[(CLASSIFIER, "1")] == "READY"
    stats = client.get_inference_statistics(CLASSIFIER)["model_stats"]
    assert stats[0]["name"] == CLASSIFIER
    assert int(stats[0]["inference_stats"]["success"]["count"]) >= 1
    assert int(stats[0]["inference_count"]) >= 1


def test_load_with_overrides_is_refused(client: httpclient.InferenceServerClient) -> None:
    """Triton's config/file overrides would load something other than the repository's entry."""
    with pytest.raises(InferenceServerException) as caught:
        client.load_model(CLASSIFIER, config='{"max_batch_size": 4}')
    assert "400" in str(caught.value.status()) and "would override the repository" in caught.value.message()
    with pytest.raises(InferenceServerException, match=r"file:1/model\.onnx"):
        client.load_model(CLASSIFIER, config="{}", files={"file:1/model.onnx": b"\0"})
    assert client.is_model_ready(CLASSIFIER)


# -- errors: each the right status and message, and the server keeps serving ------


def _raw_infer(server: RunningServer, model: str, body: object, path_extra: str = "") -> httpx.Response:
    return httpx.post(f"{server.http_url}/v2/models/{model}{path_extra}/infer", json=body, timeout=30)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]}, "datatype FP32"),
        (
            {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "b"]}]},
            "shape must be",
        ),
        (
            {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": ["a"]}]},
            "needs 3 elements",
        ),
        ({"inputs": []}, "no inputs"),
        ({"inputs": [{"name": "colour", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}, "unknown input"),
        (
            {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["not a picture"]}]},
            "image",
        ),
        (
            {
                "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a four"]}],
                "outputs": [{"name": "labels", "parameters": {"classification": 2}}],
            },
            "classification needs a numeric output",
        ),
        (
            {
                "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a four"]}],
                "outputs": [{"name": "probabilities", "parameters": {"classification": 0}}],
            },
            "must be a positive integer",
        ),
    ],
)
def test_bad_inputs_are_400(running_server: RunningServer, body: object, message: str) -> None:
    answer = _raw_infer(running_server, CLASSIFIER, body)
    assert answer.status_code in (400, 415, 422), answer.text
    assert message in answer.json()["error"]


def test_malformed_binary_header_is_400(running_server: RunningServer) -> None:
    body = (
        b'{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"parameters":{"binary_data_size":9}}]}ab'
    )
    for header in ("ten", str(len(body) + 5), str(len(body) - 2)):
        answer = httpx.post(
            f"{running_server.http_url}/v2/models/{CLASSIFIER}/infer",
            content=body,
            headers={"Inference-Header-Content-Length": header, "Content-Type": "application/octet-stream"},
        )
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]


def test_unknown_model_and_version_are_404(
    running_server: RunningServer, client: httpclient.InferenceServerClient
) -> None:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["seven"]}]}
    missing = _raw_infer(running_server, "no-such-model", body)
    assert missing.status_code == 404 and "no-such-model" in missing.json()["error"]
    version = _raw_infer(running_server, CLASSIFIER, body, "/versions/999")
    assert version.status_code == 404 and "999" in version.json()["error"]
    with pytest.raises(InferenceServerException, match="no-such-model"):
        client.get_model_metadata("no-such-model")


def test_model_config(client: httpclient.InferenceServerClient) -> None:
    """Triton's model configuration extension over REST, with the numbers as numbers."""
    config = client.get_model_config(CLASSIFIER)
    assert config["name"] == CLASSIFIER and config["max_batch_size"] >= 4
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
        ("image", "TYPE_STRING", [1]),
        ("audio", "TYPE_STRING", [1]),
        ("text", "TYPE_STRING", [1]),
    ]
    assert config["output"][0] == {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10]}
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] > 0
    assert client.get_model_config(CLASSIFIER, "1") == config
    with pytest.raises(InferenceServerException, match="no-such-model"):
        client.get_model_config("no-such-model")


def test_server_keeps_serving_after_errors(client: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException):
        client.infer(CLASSIFIER, [_bytes_input("image", [b"\x00garbage"])])
    result = client.infer(CLASSIFIER, [_bytes_input("text", [b"seven"])])
    assert result.as_numpy("labels").shape == (1, 1)
