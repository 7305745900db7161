"""No silent transformations: text cut at max_tokens and audio cropped at max_samples
are reported in the answer and counted, by model and modality, on every door
(native HTTP and gRPC, V2 REST and gRPC through tritonclient)."""

from __future__ import annotations

import io
import json

import grpc
import httpx
import numpy as np
import soundfile
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from fusionserve.service.grpc.generated.fusionserve.v1 import fusionserve_pb2 as pb
from fusionserve.service.grpc.generated.fusionserve.v1 import fusionserve_pb2_grpc as pb_grpc
from tests.conftest import RunningServer, Sample
from tests.reliability.helpers import MODEL, PREDICT, figures, metric_value

LONG_TEXT = " ".join(["seven"] * 40)
TEXT_CUT = {"given": 40, "kept": 16}
AUDIO_CUT = {"given": 40000, "kept": 16000}


def wav_seconds(seconds: float, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate), dtype=np.float32) / rate
    out = io.BytesIO()
    soundfile.write(out, 0.2 * np.sin(2 * np.pi * 440 * t), rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def truncations(server: RunningServer) -> dict[str, float]:
    text = httpx.get(f"{server.http_url}/metrics", timeout=30).text
    return {
        m: metric_value(text, "fusionserve_truncations_total", model=MODEL, modality=m)
        for m in ("text", "audio")
    }


def counted_since(before: dict[str, float], server: RunningServer) -> dict[str, float]:
    after = truncations(server)
    return {m: after[m] - before[m] for m in before}


def test_cut_inputs_are_reported_and_counted(running_server: RunningServer, samples: list[Sample]) -> None:
    before = truncations(running_server)
    with httpx.Client(base_url=running_server.http_url, timeout=60) as client:
        cut = client.post(
            PREDICT,
            files={"text": (None, LONG_TEXT), "audio": ("long.wav", wav_seconds(2.5), "audio/wav")},
        ).json()
        whole = client.post(
            PREDICT, files={"text": (None, "seven"), "audio": ("a.wav", samples[0].wav, "audio/wav")}
        ).json()
        batch = client.post(PREDICT, json={"items": [{"text": LONG_TEXT}, {"text": "one"}]}).json()
    counted = counted_since(before, running_server)
    figures("truncation reported", answer=cut.get("truncated"), counted=counted)
    assert cut["truncated"] == {"text": TEXT_CUT, "audio": AUDIO_CUT}
    assert "truncated" not in whole
    assert batch["results"][0]["truncated"] == {"text": TEXT_CUT}
    assert "truncated" not in batch["results"][1]
    assert counted == {"text": 2, "audio": 1}


def test_native_grpc_answer_carries_the_cut(running_server: RunningServer) -> None:
    before = truncations(running_server)
    items = [pb.Item(text=LONG_TEXT, audio=wav_seconds(2.5)), pb.Item(text="one")]
    with grpc.insecure_channel(running_server.grpc_target) as channel:
        stub = pb_grpc.FusionServeStub(channel)
        predicted = stub.Predict(pb.PredictRequest(model=MODEL, items=items), timeout=60)
        embedded = stub.Embed(
            pb.EmbedRequest(model="digits-embed", items=[pb.Item(text=LONG_TEXT)]), timeout=60
        )

    def cuts(result: pb.Prediction | pb.Embedding) -> dict[str, dict[str, int]]:
        return {m: {"given": t.given, "kept": t.kept} for m, t in result.truncated.items()}

    counted = counted_since(before, running_server)
    figures("truncation over native gRPC", first=cuts(predicted.results[0]), counted=counted)
    assert cuts(predicted.results[0]) == {"text": TEXT_CUT, "audio": AUDIO_CUT}
    assert cuts(predicted.results[1]) == {}
    assert cuts(embedded.results[0])["text"]["given"] == 40
    assert counted == {"text": 1, "audio": 1}


def _v2_text_input(module: object, rows: list[str]) -> object:
    tensor = module.InferInput("text", [len(rows), 1], "BYTES")  # type: ignore[attr-defined]
    tensor.set_data_from_numpy(np.array([r.encode() for r in rows], dtype=np.object_).reshape(-1, 1))
    return tensor


def test_v2_rest_answer_carries_the_cut(running_server: RunningServer) -> None:
    before = truncations(running_server)
    client = triton_http.InferenceServerClient(running_server.http_url.removeprefix("http://"))
    try:
        cut = client.infer(MODEL, [_v2_text_input(triton_http, ["one", LONG_TEXT])])
        whole = client.infer(MODEL, [_v2_text_input(triton_http, ["one"])])
    finally:
        client.close()
    parameters = cut.get_response().get("parameters", {})
    counted = counted_since(before, running_server)
    figures("truncation over V2 REST", parameters=parameters, counted=counted)
    assert json.loads(parameters["truncated"]) == [None, {"text": TEXT_CUT}]
    assert "parameters" not in whole.get_response()
    assert counted["text"] == 1


def test_v2_grpc_answer_carries_the_cut(running_server: RunningServer) -> None:
    before = truncations(running_server)
    client = triton_grpc.InferenceServerClient(running_server.grpc_target)
    try:
        cut = client.infer(MODEL, [_v2_text_input(triton_grpc, [LONG_TEXT])])
        whole = client.infer(MODEL, [_v2_text_input(triton_grpc, ["one"])])
    finally:
        client.close()
    parameters = cut.get_response().parameters
    counted = counted_since(before, running_server)
    figures("truncation over V2 gRPC", truncated=parameters["truncated"].string_param, counted=counted)
    assert json.loads(parameters["truncated"].string_param) == [{"text": TEXT_CUT}]
    assert "truncated" not in whole.get_response().parameters
    assert counted["text"] == 1
