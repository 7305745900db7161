"""One call, everything the model knows: predict with embeddings and per-modality attribution.

Over native HTTP, KServe V2 REST (tritonclient) and native gRPC, on the real
bundled ``digits-fusion`` (late fusion): the numbers equal those of the
separate predict and embed calls (<= 1e-5), and the attribution means what
the README says (the model's logits are the mean of the per-modality logits).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml

from fusionserve.service.grpc.generated.fusionserve.v1 import fusionserve_pb2 as pb
from fusionserve.service.grpc.generated.fusionserve.v1 import fusionserve_pb2_grpc as pb_grpc
from tests.conftest import RunningServer, Sample, copy_entry
from tests.integration.v2_helpers import CLASSIFIER, object_column

ATOL = 1e-5
SUBSETS = [("image", "audio", "text"), ("image", "text"), ("audio",)]


def _parts(sample: Sample, subset: tuple[str, ...]) -> dict[str, tuple]:
    parts: dict[str, tuple] = {}
    if "image" in subset:
        parts["image"] = ("digit.png", sample.png, "image/png")
    if "audio" in subset:
        parts["audio"] = ("digit.wav", sample.wav, "audio/wav")
    if "text" in subset:
        parts["text"] = (None, sample.text)
    return parts


@pytest.fixture(scope="module")
def client(running_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running_server.http_url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def stub(running_server: RunningServer) -> Iterator[pb_grpc.FusionServeStub]:
    with grpc.insecure_channel(running_server.grpc_target) as channel:
        yield pb_grpc.FusionServeStub(channel)


def _predict(client: httpx.Client, sample: Sample, subset: tuple[str, ...], **form: str) -> dict:
    files = _parts(sample, subset)
    files.update({k: (None, v) for k, v in form.items()})
    response = client.post(f"/v1/models/{CLASSIFIER}/predict", files=files)
    assert response.status_code == 200, response.text
    return response.json()


def _probabilities(answer: dict, labels: list[str]) -> np.ndarray:
    scores = {p["label"]: p["score"] for p in answer["predictions"]}
    return np.array([scores[label] for label in labels])


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


@pytest.mark.parametrize("subset", SUBSETS, ids=["+".join(s) for s in SUBSETS])
def test_http_predict_with_everything_equals_the_separate_calls(
    client: httpx.Client, samples: list[Sample], subset: tuple[str, ...]
) -> None:
    labels = client.get(f"/v1/models/{CLASSIFIER}").json()["labels"]
    sample = samples[1]
    both = _predict(client, sample, subset, include="embeddings,attribution", top_k="10")
    plain = _predict(client, sample, subset, top_k="10")
    embed = client.post(f"/v1/models/{CLASSIFIER}/embed", files=_parts(sample, subset))
    assert embed.status_code == 200, embed.text
    separate = embed.json()

    assert both["modalities"] == list(subset)
    np.testing.assert_allclose(_probabilities(both, labels), _probabilities(plain, labels), atol=ATOL)
    np.testing.assert_allclose(both["embedding"], separate["embedding"], atol=ATOL)
    assert sorted(both["embeddings"]) == sorted(subset)
    for modality in subset:
        np.testing.assert_allclose(both["embeddings"][modality], separate["embeddings"][modality], atol=ATOL)
        assert np.linalg.norm(both["embeddings"][modality]) == pytest.approx(1.0, abs=1e-4)

    attribution = both["attribution"]
    assert attribution["kind"] == "logits"
    assert sorted(attribution["modalities"]) == sorted(subset)
    per = np.array([attribution["modalities"][m] for m in subset])
    assert per.shape == (len(subset), len(labels))
    # Late fusion: the model's logits are the mean of the present modalities' logits.
    np.testing.assert_allclose(_softmax(per.mean(axis=0)), _probabilities(plain, labels), atol=1e-4)


def test_json_predict_takes_include_as_a_list(client: httpx.Client, samples: list[Sample]) -> None:
    import base64

    body = {
        "text": samples[0].text,
        "image": base64.b64encode(samples[0].png).decode(),
        "include": ["embeddings"],
    }
    response = client.post(f"/v1/models/{CLASSIFIER}/predict", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert sorted(answer["embeddings"]) == ["image", "text"] and "attribution" not in answer


def test_plain_predict_answer_is_unchanged(client: httpx.Client, samples: list[Sample]) -> None:
    answer = _predict(client, samples[0], ("text",))
    assert set(answer) == {"model", "version", "modalities", "predictions"}


def test_unknown_include_is_400_naming_the_allowed_values(
    client: httpx.Client, samples: list[Sample]
) -> None:
    response = client.post(
        f"/v1/models/{CLASSIFIER}/predict",
        files={"text": (None, samples[0].text), "include": (None, "gradients")},
    )
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "gradients" in message and "'embeddings', 'attribution'" in message


def test_v2_named_outputs_equal_the_native_answer(
    running_server: RunningServer, client: httpx.Client, samples: list[Sample]
) -> None:
    rows = samples[:3]
    triton = httpclient.InferenceServerClient(f"127.0.0.1:{running_server.http_port}", network_timeout=60)
    try:
        inputs = []
        for name, values in (("image", [s.png for s in rows]), ("text", [s.text.encode() for s in rows])):
            tensor = httpclient.InferInput(name, [len(values)], "BYTES")
            tensor.set_data_from_numpy(object_column(values), binary_data=True)
            inputs.append(tensor)
        names = ["probabilities", "fused_embedding", "image_embedding", "modality_attribution"]
        result = triton.infer(CLASSIFIER, inputs, outputs=[httpclient.InferRequestedOutput(n) for n in names])
    finally:
        triton.close()
    labels = client.get(f"/v1/models/{CLASSIFIER}").json()["labels"]
    for i, sample in enumerate(rows):
        native = _predict(client, sample, ("image", "text"), include="embeddings,attribution", top_k="10")
        np.testing.assert_allclose(
            result.as_numpy("probabilities")[i], _probabilities(native, labels), atol=ATOL
        )
        np.testing.assert_allclose(result.as_numpy("fused_embedding")[i], native["embedding"], atol=ATOL)
        np.testing.assert_allclose(
            result.as_numpy("image_embedding")[i], native["embeddings"]["image"], atol=ATOL
        )
        attribution = result.as_numpy("modality_attribution")[i].reshape(3, -1)  # image, audio, text
        np.testing.assert_allclose(attribution[0], native["attribution"]["modalities"]["image"], atol=ATOL)
        np.testing.assert_array_equal(attribution[1], 0.0)  # audio absent
        np.testing.assert_allclose(attribution[2], native["attribution"]["modalities"]["text"], atol=ATOL)


def test_grpc_predict_with_include_equals_the_separate_calls(
    stub: pb_grpc.FusionServeStub, samples: list[Sample]
) -> None:
    item = pb.Item(image=samples[2].png, audio=samples[2].wav, text=samples[2].text)
    both = stub.Predict(
        pb.PredictRequest(model=CLASSIFIER, items=[item], include=["embeddings", "attribution"]), timeout=60
    ).results[0]
    plain = stub.Predict(pb.PredictRequest(model=CLASSIFIER, items=[item]), timeout=60).results[0]
    embed = stub.Embed(pb.EmbedRequest(model=CLASSIFIER, items=[item]), timeout=60).results[0]
    np.testing.assert_allclose(both.probabilities, plain.probabilities, atol=ATOL)
    np.testing.assert_allclose(both.embedding.values, embed.embedding.values, atol=ATOL)
    for modality in ("image", "audio", "text"):
        np.testing.assert_allclose(
            both.embeddings[modality].values, embed.embeddings[modality].values, atol=ATOL
        )
    assert both.attribution.kind == "logits"
    per = np.array([both.attribution.values[m].values for m in ("image", "audio", "text")])
    np.testing.assert_allclose(_softmax(per.mean(axis=0)), plain.probabilities, atol=1e-4)


def test_grpc_unknown_include_is_invalid_argument(
    stub: pb_grpc.FusionServeStub, samples: list[Sample]
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(
            pb.PredictRequest(
                model=CLASSIFIER, items=[pb.Item(text=samples[0].text)], include=["everything"]
            ),
            timeout=60,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "allowed: ['embeddings', 'attribution']" in (info.value.details() or "")


def test_an_entry_from_older_code_serves_without_the_extras(
    model_repository: Path, server_factory, samples: list[Sample], tmp_path: Path
) -> None:
    """An entry exported before embeddings/attribution existed declares only its logits."""
    config = yaml.safe_load((model_repository / CLASSIFIER / "config.yaml").read_text())
    old_outputs = [o for o in config["outputs"] if o["kind"] == "logits"]
    metadata = {k: v for k, v in config["metadata"].items() if k != "export_format"}
    repo = copy_entry(model_repository, tmp_path / "repo", CLASSIFIER, outputs=old_outputs, metadata=metadata)
    server = server_factory(repo, grpc=False)
    with httpx.Client(base_url=server.http_url, timeout=60) as old:
        ok = old.post(f"/v1/models/{CLASSIFIER}/predict", files={"text": (None, samples[0].text)})
        assert ok.status_code == 200, ok.text
        refused = old.post(
            f"/v1/models/{CLASSIFIER}/predict",
            files={"text": (None, samples[0].text), "include": (None, "embeddings")},
        )
    assert refused.status_code == 400
    assert "yields no embedding" in refused.json()["error"]["message"]
    assert "rebuild it with build-repo" in refused.json()["error"]["message"]


def test_v2_grpc_named_outputs_equal_the_native_answer(
    running_server: RunningServer, client: httpx.Client, samples: list[Sample]
) -> None:
    import tritonclient.grpc as grpcclient

    sample = samples[7]
    triton = grpcclient.InferenceServerClient(running_server.grpc_target)
    try:
        inputs = []
        for name, value in (("audio", sample.wav), ("text", sample.text.encode())):
            tensor = grpcclient.InferInput(name, [1], "BYTES")
            tensor.set_data_from_numpy(object_column([value]))
            inputs.append(tensor)
        names = ["modality_attribution", "text_embedding", "fused_embedding"]
        result = triton.infer(CLASSIFIER, inputs, outputs=[grpcclient.InferRequestedOutput(n) for n in names])
    finally:
        triton.close()
    native = _predict(client, sample, ("audio", "text"), include="embeddings,attribution")
    attribution = result.as_numpy("modality_attribution")[0].reshape(3, -1)
    np.testing.assert_array_equal(attribution[0], 0.0)  # image absent
    np.testing.assert_allclose(attribution[1], native["attribution"]["modalities"]["audio"], atol=ATOL)
    np.testing.assert_allclose(result.as_numpy("text_embedding")[0], native["embeddings"]["text"], atol=ATOL)
    np.testing.assert_allclose(result.as_numpy("fused_embedding")[0], native["embedding"], atol=ATOL)
