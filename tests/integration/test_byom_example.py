"""The worked example of docs/model-config.md: a model exported outside models/, served with a config.yaml.

examples/byom/fusion_model.py writes seeded, untrained modules with plain
``torch.onnx.export`` and their natural tensor names; the server must answer
over multipart HTTP, V2 REST and V2 gRPC with the probabilities eager PyTorch
gives on the user's own preprocessing of the same files, within 1e-4.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml
from PIL import Image

from tests.conftest import ROOT, RunningServer, launch_server
from tests.integration.v2_helpers import object_column

ATOL = 1e-4
TEXTS = ["A small red cat sitting on the mat", "big dog", "blue fish swimming in the sea of zzz"]


def _load_example() -> ModuleType:
    path = ROOT / "examples" / "byom" / "fusion_model.py"
    spec = importlib.util.spec_from_file_location("byom_fusion_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fm = _load_example()


def _png(seed: int, size: tuple[int, int]) -> bytes:
    """A smooth colour picture (not 224x224, so the server really resizes)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    channels = [127 + 120 * np.sin(xx / (9 + 4 * c) + yy / (13 + c) + rng.uniform(0, 6)) for c in range(3)]
    pixels = np.clip(np.stack(channels, axis=2) + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="PNG")
    return out.getvalue()


def _wav(seed: int, seconds: float) -> bytes:
    rng = np.random.default_rng(seed)
    n = int(fm.SAMPLE_RATE * seconds)
    wave = 0.3 * np.sin(np.arange(n) * (0.02 + 0.01 * seed)) + 0.05 * rng.normal(size=n)
    out = io.BytesIO()
    sf.write(out, wave.astype(np.float32), fm.SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return out.getvalue()


class Example:
    """The repository, the eager models, the files and the running server."""

    def __init__(self, repo: Path, server: RunningServer) -> None:
        self.repo = repo
        self.server = server
        self.tokenizer = fm.build_tokenizer()
        vocab = self.tokenizer.get_vocab_size()
        self.models = {name: fm.build_model(name, vocab) for name in fm.VARIANTS}
        self.images = [_png(i, size) for i, size in enumerate([(300, 200), (160, 240), (224, 224)])]
        self.sounds = [_wav(i, s) for i, s in enumerate([0.7, 1.3, 1.0])]

    def eager(self, name: str, rows: list[dict[str, bytes | str]]) -> np.ndarray:
        """Softmax of eager PyTorch on the user's own preprocessing: the reference answer."""
        feeds: dict[str, list[np.ndarray]] = {}
        for row in rows:
            text = fm.reference_text(self.tokenizer, str(row["text"]))
            values = {"pixel_values": fm.reference_pixels(bytes(row["image"]))}
            if "audio" in row:
                samples, _ = sf.read(io.BytesIO(bytes(row["audio"])), dtype="float32")
                values["input_values"] = fm.reference_audio(samples)
            for key, value in {**values, **text}.items():
                feeds.setdefault(key, []).append(value)
        with torch.no_grad():
            logits = self.models[name](*(torch.from_numpy(np.stack(v)) for v in feeds.values()))
        return torch.softmax(logits, dim=1).numpy()

    def rows(self, with_audio: bool) -> list[dict[str, bytes | str]]:
        rows: list[dict[str, bytes | str]] = []
        for i, text in enumerate(TEXTS):
            row: dict[str, bytes | str] = {"image": self.images[i], "text": text}
            if with_audio:
                row["audio"] = self.sounds[i]
            rows.append(row)
        return rows


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Example]:
    repo = tmp_path_factory.mktemp("byom-repo")
    tokenizer = fm.build_tokenizer()
    for name in fm.VARIANTS:
        fm.write_entry(repo, name, fm.build_model(name, tokenizer.get_vocab_size()), tokenizer)
    # A third entry whose mapping names a tensor the graph does not have: refused, the rest serve.
    broken = repo / "wrong-mapping"
    broken.mkdir()
    config = yaml.safe_load((repo / "image-text" / "config.yaml").read_text())
    config["name"] = "wrong-mapping"
    config["modalities"]["image"]["input"] = "pixels"
    (broken / "config.yaml").write_text(yaml.safe_dump(config))
    for side in ("labels.txt", "tokenizer.json"):
        (broken / side).write_bytes((repo / "image-text" / side).read_bytes())
    (broken / "1").mkdir()
    (broken / "1" / "model.onnx").write_bytes((repo / "image-text" / "1" / "model.onnx").read_bytes())
    # image-audio-text carries hooks.py (per-row waveform normalisation): the operator allows it.
    env = {"FUSIONSERVE_ALLOW_MODEL_CODE": "1"}
    server = launch_server(repo, tmp_path_factory.mktemp("byom-logs"), wait=False, env=env)
    try:
        server.wait_live()
        _wait_model(server, "image-text")
        _wait_model(server, "image-audio-text")
        yield Example(repo, server)
    finally:
        server.stop()


def _wait_model(server: RunningServer, model: str) -> None:
    import time

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if httpx.get(f"{server.http_url}/v2/models/{model}/ready", timeout=5).status_code == 200:
            return
        time.sleep(0.2)
    raise AssertionError(f"{model} never became ready; log:\n{server.log}")


def _multipart(example: Example, model: str, row: dict[str, bytes | str]) -> np.ndarray:
    files: dict[str, tuple[str | None, bytes | str]] = {"top_k": (None, str(len(fm.LABELS)))}
    files["image"] = ("picture.png", row["image"])
    if "audio" in row:
        files["audio"] = ("sound.wav", row["audio"])
    files["text"] = (None, row["text"])
    answer = httpx.post(f"{example.server.http_url}/v1/models/{model}/predict", files=files, timeout=60)
    assert answer.status_code == 200, answer.text
    scores = {p["label"]: p["score"] for p in answer.json()["predictions"]}
    return np.asarray([scores[label] for label in fm.LABELS], dtype=np.float32)


def _v2_inputs(module: ModuleType, rows: list[dict[str, bytes | str]]) -> list:
    inputs = []
    for name in ("image", "audio", "text"):
        if name not in rows[0]:
            continue
        values = [v.encode() if isinstance(v, str) else v for v in (row[name] for row in rows)]
        tensor = module.InferInput(name, [len(rows)], "BYTES")
        tensor.set_data_from_numpy(object_column(values))
        inputs.append(tensor)
    return inputs


@pytest.mark.parametrize("model", list(fm.VARIANTS))
def test_three_doors_answer_as_eager_pytorch(example: Example, model: str) -> None:
    rows = example.rows(with_audio=fm.VARIANTS[model])
    want = example.eager(model, rows)
    assert not np.allclose(want, want[0])  # the rows really differ

    multipart = np.stack([_multipart(example, model, row) for row in rows])
    np.testing.assert_allclose(multipart, want, atol=ATOL)

    rest = httpclient.InferenceServerClient(f"127.0.0.1:{example.server.http_port}")
    try:
        batch = rest.infer(model, _v2_inputs(httpclient, rows)).as_numpy("probabilities")
    finally:
        rest.close()
    np.testing.assert_allclose(batch, want, atol=ATOL)

    grpc = grpcclient.InferenceServerClient(example.server.grpc_target)
    try:
        batch = grpc.infer(model, _v2_inputs(grpcclient, rows)).as_numpy("probabilities")
    finally:
        grpc.close()
    np.testing.assert_allclose(batch, want, atol=ATOL)


def test_a_modality_the_graph_needs_is_a_422_naming_it(example: Example) -> None:
    row = example.rows(with_audio=False)[0]
    answer = httpx.post(
        f"{example.server.http_url}/v1/models/image-text/predict",
        json={"image": base64.b64encode(bytes(row["image"])).decode()},
        timeout=30,
    )
    assert answer.status_code == 422, answer.text
    assert "needs text" in answer.json()["error"]["message"]


def test_a_wrong_mapping_is_refused_with_the_field_and_both_sides(example: Example) -> None:
    body = httpx.get(f"{example.server.http_url}/v1/models/wrong-mapping", timeout=10).json()
    reason = str(body)
    assert "wrong-mapping/config.yaml" in reason
    assert "modalities.image.input" in reason and "'pixels'" in reason and "pixel_values" in reason
    # ... and the other models keep serving.
    assert httpx.get(f"{example.server.http_url}/v2/models/image-text/ready", timeout=10).status_code == 200
