"""V2 over gRPC driven by tritonclient's gRPC client: health, metadata, infer, streaming, errors."""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
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
def client(running_server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    triton = grpcclient.InferenceServerClient(running_server.grpc_target)
    yield triton
    triton.close()


def _bytes_input(name: str, values: list[bytes]) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, [len(values), 1], "BYTES")  # Triton's usual [B,1]
    tensor.set_data_from_numpy(object_column(values).reshape(-1, 1))
    return tensor


def _file_inputs(rows: list[Sample]) -> list[grpcclient.InferInput]:
    return [
        _bytes_input("image", [s.jpeg for s in rows]),
        _bytes_input("audio", [s.wav for s in rows]),
        _bytes_input("text", [s.text.encode() for s in rows]),
    ]


def test_health_and_metadata(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(CLASSIFIER) and client.is_model_ready(EMBEDDER, "1")
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "fusionserve"
    meta = client.get_model_metadata(CLASSIFIER, as_json=True)
    assert meta["platform"] in ("onnxruntime_onnx", "pytorch_libtorch")
    assert [i["name"] for i in meta["inputs"]] == ["image", "audio", "text"]
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]][:3] == [
        ("probabilities", "FP32"),
        ("labels", "BYTES"),
        ("scores", "FP32"),
    ]
    assert "modality_attribution" in [o["name"] for o in meta["outputs"]]
    embed = client.get_model_metadata(EMBEDDER, as_json=True)
    assert "fused_embedding" in [o["name"] for o in embed["outputs"]]


def test_model_config_describes_what_infer_accepts(
    client: grpcclient.InferenceServerClient, samples: list[Sample]
) -> None:
    """Triton's ModelConfig: a client that shapes its request from it (as perf_analyzer
    does: batch dimension + dims) gets an answer."""
    config = client.get_model_config(CLASSIFIER, as_json=True)["config"]
    assert config["name"] == CLASSIFIER and config["backend"] in ("onnxruntime", "pytorch")
    assert int(config["max_batch_size"]) >= 4
    assert [(i["name"], i["data_type"], i["dims"], i["optional"]) for i in config["input"]] == [
        ("image", "TYPE_STRING", ["1"], True),
        ("audio", "TYPE_STRING", ["1"], True),
        ("text", "TYPE_STRING", ["1"], True),
    ]
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [
        ("probabilities", "TYPE_FP32", ["10"]),
        ("labels", "TYPE_STRING", ["-1"]),
        ("scores", "TYPE_FP32", ["-1"]),
        ("fused_embedding", "TYPE_FP32", ["128"]),
        ("image_embedding", "TYPE_FP32", ["64"]),
        ("audio_embedding", "TYPE_FP32", ["64"]),
        ("text_embedding", "TYPE_FP32", ["64"]),
        ("modality_attribution", "TYPE_FP32", ["30"]),
    ]
    rows = samples[:2]
    inputs = []
    columns = ([s.jpeg for s in rows], [s.wav for s in rows], [s.text.encode() for s in rows])
    for spec, values in zip(config["input"], columns, strict=True):
        shape = [len(rows), *(int(d) for d in spec["dims"])]
        tensor = grpcclient.InferInput(spec["name"], shape, "BYTES")
        tensor.set_data_from_numpy(np.array(values, dtype=object).reshape(shape))
        inputs.append(tensor)
    probabilities = client.infer(CLASSIFIER, inputs).as_numpy("probabilities")
    assert probabilities.shape == (2, int(config["output"][0]["dims"][0]))
    embed = client.get_model_config(EMBEDDER, as_json=True)["config"]
    assert "fused_embedding" in [o["name"] for o in embed["output"]]
    status, message = _status(lambda: client.get_model_config("no-such-model"))
    assert status == "StatusCode.NOT_FOUND" and "no-such-model" in message


def test_infer_with_real_files(client: grpcclient.InferenceServerClient, samples: list[Sample]) -> None:
    rows = samples[:4]
    result = client.infer(CLASSIFIER, _file_inputs(rows), parameters={"top_k": 3}, request_id="g1")
    labels, scores, probs = (result.as_numpy(n) for n in ("labels", "scores", "probabilities"))
    assert result.get_response().id == "g1" and result.get_response().model_version == "1"
    assert labels.shape == (4, 3) and probs.shape == (4, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    for row in range(4):
        assert labels[row, 0].decode() == str(int(np.argmax(probs[row])))
        assert scores[row, 0] == pytest.approx(float(probs[row].max()), abs=1e-6)


def test_requested_outputs_only(client: grpcclient.InferenceServerClient, samples: list[Sample]) -> None:
    outputs = [grpcclient.InferRequestedOutput("labels")]
    result = client.infer(CLASSIFIER, _file_inputs(samples[:1]), outputs=outputs)
    assert [o.name for o in result.get_response().outputs] == ["labels"]


def test_classification_extension(client: grpcclient.InferenceServerClient, samples: list[Sample]) -> None:
    """``class_count`` on an output: its top classes as ``value:index:label`` strings."""
    rows = _file_inputs(samples[:4])
    outputs = [grpcclient.InferRequestedOutput("probabilities", class_count=4)]
    classes = client.infer(CLASSIFIER, rows, outputs=outputs).as_numpy("probabilities")
    check_classes(classes, client.infer(CLASSIFIER, rows).as_numpy("probabilities"), 4)
    labels = [grpcclient.InferRequestedOutput("labels", class_count=1)]
    status, message = _status(lambda: client.infer(CLASSIFIER, rows, outputs=labels))
    assert status == "StatusCode.INVALID_ARGUMENT" and "classification needs a numeric output" in message


def test_streaming_infer(
    client: grpcclient.InferenceServerClient, samples: list[Sample], running_server: RunningServer
) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()

    def collect(sink: queue.Queue[tuple[Any, Any]], result: Any, error: Any) -> None:
        sink.put((result, error))

    client.start_stream(callback=partial(collect, answers))
    try:
        for i, sample in enumerate(samples[:6]):
            client.async_stream_infer(
                CLASSIFIER, _file_inputs([sample]), request_id=str(i), parameters={"top_k": 2}
            )
        client.async_stream_infer("no-such-model", _file_inputs(samples[:1]), request_id="bad")
        got = [answers.get(timeout=60) for _ in range(7)]
    finally:
        client.stop_stream()
    ok = {r.get_response().id: r for r, e in got if e is None}
    errors = [e for _, e in got if e is not None]
    assert set(ok) == {str(i) for i in range(6)}
    assert all(r.as_numpy("labels").shape == (1, 2) for r in ok.values())
    assert len(errors) == 1 and "no-such-model" in str(errors[0])
    # One access-log line per stream message, with the message's id as request id.
    logged = [json.loads(line) for line in running_server.log().splitlines() if '"ModelStreamInfer"' in line]
    codes = {line["request_id"]: line["code"] for line in logged}
    assert codes.get("bad") == "NOT_FOUND" and all(codes.get(str(i)) == "OK" for i in range(6))


def test_repository_and_statistics(client: grpcclient.InferenceServerClient, samples: list[Sample]) -> None:
    client.infer(CLASSIFIER, _file_inputs(samples[:1]))
    index = client.get_model_repository_index(as_json=True)
    assert any(m["name"] == CLASSIFIER and m.get("state") == "READY" for m in index["models"])
    stats = client.get_inference_statistics(CLASSIFIER, as_json=True)["model_stats"][0]
    assert stats["name"] == CLASSIFIER and int(stats["inference_count"]) >= 1


def test_load_with_overrides_is_refused(client: grpcclient.InferenceServerClient) -> None:
    status, message = _status(lambda: client.load_model(CLASSIFIER, config='{"max_batch_size": 4}'))
    assert status == "StatusCode.INVALID_ARGUMENT" and "would override the repository" in message
    assert client.is_model_ready(CLASSIFIER)


# -- errors ----------------------------------------------------------------------------


def _status(call: object) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as caught:
        call()  # type: ignore[operator]
    return caught.value.status(), caught.value.message()


def test_wrong_datatype_and_shape(client: grpcclient.InferenceServerClient) -> None:
    floats = grpcclient.InferInput("text", [1], "FP32")
    floats.set_data_from_numpy(np.ones(1, dtype=np.float32))
    status, message = _status(lambda: client.infer(CLASSIFIER, [floats]))
    assert status == "StatusCode.INVALID_ARGUMENT" and "datatype FP32" in message
    wide = grpcclient.InferInput("text", [1, 2], "BYTES")
    wide.set_data_from_numpy(object_column([b"a", b"b"]).reshape(1, 2))
    status, message = _status(lambda: client.infer(CLASSIFIER, [wide]))
    assert status == "StatusCode.INVALID_ARGUMENT" and "[B] or [B,1]" in message


def test_missing_and_unknown_inputs(client: grpcclient.InferenceServerClient) -> None:
    status, message = _status(lambda: client.infer(CLASSIFIER, []))
    assert status == "StatusCode.INVALID_ARGUMENT" and "no inputs" in message
    colour = _bytes_input("colour", [b"red"])
    status, message = _status(lambda: client.infer(CLASSIFIER, [colour]))
    assert status == "StatusCode.INVALID_ARGUMENT" and "unknown input(s) ['colour']" in message


def test_undecodable_file_is_invalid_argument(client: grpcclient.InferenceServerClient) -> None:
    status, message = _status(
        lambda: client.infer(CLASSIFIER, [_bytes_input("image", [b"\x00not an image"])])
    )
    assert status == "StatusCode.INVALID_ARGUMENT" and message


def test_unknown_model_and_version(client: grpcclient.InferenceServerClient) -> None:
    text = _bytes_input("text", [b"seven"])
    status, message = _status(lambda: client.infer("no-such-model", [text]))
    assert status == "StatusCode.NOT_FOUND" and "no-such-model" in message
    status, message = _status(lambda: client.infer(CLASSIFIER, [text], model_version="999"))
    assert status == "StatusCode.NOT_FOUND" and "999" in message
    status, _ = _status(lambda: client.get_model_metadata("no-such-model"))
    assert status == "StatusCode.NOT_FOUND"


def test_expired_deadline(client: grpcclient.InferenceServerClient, samples: list[Sample]) -> None:
    """A deadline too short to decode the files: DEADLINE_EXCEEDED, whichever side notices first."""
    status, _ = _status(lambda: client.infer(CLASSIFIER, _file_inputs(samples[:8]), client_timeout=0.000_001))
    assert status == "StatusCode.DEADLINE_EXCEEDED"
    # The server's own timeout (Triton's "timeout" parameter, µs) expires on the server side.
    status, message = _status(lambda: client.infer(CLASSIFIER, _file_inputs(samples[:8]), timeout=1))
    assert status == "StatusCode.DEADLINE_EXCEEDED" and "deadline" in message


def test_server_keeps_serving_after_errors(
    client: grpcclient.InferenceServerClient, samples: list[Sample]
) -> None:
    with pytest.raises(InferenceServerException):
        client.infer("no-such-model", _file_inputs(samples[:1]))
    assert client.infer(CLASSIFIER, _file_inputs(samples[:1])).as_numpy("labels").shape == (1, 1)
    assert client.is_server_ready()


def test_decoded_tensors_in_raw_contents(
    client: grpcclient.InferenceServerClient, samples: list[Sample]
) -> None:
    """UINT8 [B,H,W,3] and FP32 [B,T] raw contents answer as the PNG/WAV files they came from."""
    rows = samples[:2]
    image = np.stack([decoded_image(s.png) for s in rows])
    length = min(len(decoded_audio(s.wav)) for s in rows)
    audio = np.stack([decoded_audio(s.wav)[:length] for s in rows])
    image_in = grpcclient.InferInput("image", list(image.shape), "UINT8")
    image_in.set_data_from_numpy(image)
    audio_in = grpcclient.InferInput("audio", list(audio.shape), "FP32")
    audio_in.set_data_from_numpy(audio)
    decoded = client.infer(CLASSIFIER, [image_in, audio_in], parameters={"top_k": 10})
    wavs = [_cropped_wav(s.wav, length) for s in rows]
    encoded = client.infer(
        CLASSIFIER,
        [_bytes_input("image", [s.png for s in rows]), _bytes_input("audio", wavs)],
        parameters={"top_k": 10},
    )
    np.testing.assert_array_equal(decoded.as_numpy("labels"), encoded.as_numpy("labels"))
    np.testing.assert_allclose(
        decoded.as_numpy("probabilities"), encoded.as_numpy("probabilities"), atol=1e-5
    )


def _cropped_wav(wav: bytes, samples: int) -> bytes:
    """The same recording cut to ``samples`` frames, written back losslessly (float WAV)."""
    import io

    import soundfile as sf

    wave, rate = sf.read(io.BytesIO(wav), dtype="float32")
    out = io.BytesIO()
    sf.write(out, wave[:samples], rate, format="WAV", subtype="FLOAT")
    return out.getvalue()


@pytest.mark.parametrize(
    ("modalities", "at_least"),
    [(("image", "audio", "text"), 10), (("image",), 4), (("audio",), 4), (("text",), 8)],
)
def test_each_modality_reaches_the_model_as_itself(
    client: grpcclient.InferenceServerClient,
    samples: list[Sample],
    modalities: tuple[str, ...],
    at_least: int,
) -> None:
    """Real rows, one modality at a time: far above chance (1.2 of 12), so none is lost or swapped.

    The trained model scores about 0.97 with all three, 0.63 image, 0.65 audio, 0.91 text.
    """
    inputs = [t for t in _file_inputs(samples) if t.name() in modalities]
    result = client.infer(CLASSIFIER, inputs)
    predicted = [label.decode() for label in result.as_numpy("labels")[:, 0]]
    correct = sum(p == s.label for p, s in zip(predicted, samples, strict=True))
    assert correct >= at_least, list(zip(predicted, [s.label for s in samples], strict=True))
