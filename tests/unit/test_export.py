"""Export writes a correct, self-describing entry, and refuses to write a wrong one."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
import yaml
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.normalizers import Lowercase
from tokenizers.pre_tokenizers import Whitespace
from torch import Tensor, nn

from fusionserve.models.export import ExportError, export_entry
from fusionserve.models.parity import random_batch
from fusionserve.models.verify import jit_deprecation_silenced, verify_entry
from fusionserve.service.model.config import Modality, ModelConfig, load_model_config

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
LABELS = ["cat", "dog", "bird", "fish"]
ALL = frozenset(Modality)


def _config(
    name: str = "tiny", task: str = "classify", backend: str = "onnx", **extra: object
) -> ModelConfig:
    outputs: list[dict[str, object]]
    if task == "classify":
        outputs = [{"name": "class_logits", "kind": "logits", "dims": len(LABELS)}]
    else:
        outputs = [
            {"name": f"{src}_embedding", "kind": "embedding", "source": src, "dims": 6}
            for src in ("fused", "image", "audio", "text")
        ]
    return ModelConfig.model_validate(
        {
            "name": name,
            "task": task,
            "backend": backend,
            "modalities": {
                "image": {"height": 8, "width": 6},
                "audio": {"sample_rate": 8000, "max_samples": 900, "min_samples": 64},
                "text": {"max_tokens": 9},
            },
            "outputs": outputs,
            **extra,
        }
    )


class Features(nn.Module):
    """Per-modality vectors that ignore padding (audio via audio_length, text via text_attention)."""

    def __init__(self, vocab: int, dim: int = 6) -> None:
        super().__init__()
        self.image = nn.Linear(3, dim)
        self.audio = nn.Linear(2, dim)
        self.text = nn.Embedding(vocab, dim)

    def forward(
        self, image: Tensor, audio: Tensor, audio_length: Tensor, text_ids: Tensor, text_attention: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        img = self.image(image.to(torch.float32).mean(dim=(1, 2)) / 255.0)
        valid = (torch.arange(audio.shape[1]).unsqueeze(0) < audio_length.unsqueeze(1)).to(audio.dtype)
        count = audio_length.clamp(min=1).to(audio.dtype)
        stats = torch.stack([(audio.abs() * valid).sum(1) / count, (audio * audio * valid).sum(1) / count], 1)
        att = text_attention.to(torch.float32).unsqueeze(-1)
        txt = (self.text(text_ids) * att).sum(1) / att.sum(1).clamp(min=1.0)
        return img, self.audio(stats), txt


def masked(x: Tensor, mask: Tensor) -> Tensor:
    """Rows whose modality is absent become zeros, whatever their tensors held."""
    return torch.where(mask.unsqueeze(1), x, torch.zeros_like(x))


class TinyClassifier(nn.Module):
    def __init__(self, vocab: int = 16, classes: int = len(LABELS)) -> None:
        super().__init__()
        self.features = Features(vocab)
        self.head = nn.Linear(6, classes)

    def forward(
        self,
        image: Tensor,
        image_mask: Tensor,
        audio: Tensor,
        audio_length: Tensor,
        audio_mask: Tensor,
        text_ids: Tensor,
        text_attention: Tensor,
        text_mask: Tensor,
    ) -> Tensor:
        img, aud, txt = self.features(image, audio, audio_length, text_ids, text_attention)
        img, aud, txt = masked(img, image_mask), masked(aud, audio_mask), masked(txt, text_mask)
        present = image_mask.to(torch.float32) + audio_mask.to(torch.float32) + text_mask.to(torch.float32)
        return self.head((img + aud + txt) / present.clamp(min=1.0).unsqueeze(1))


class TinyEmbedder(nn.Module):
    def __init__(self, vocab: int = 16) -> None:
        super().__init__()
        self.features = Features(vocab)
        self.fuse = nn.Linear(18, 6)

    def forward(
        self,
        image: Tensor,
        image_mask: Tensor,
        audio: Tensor,
        audio_length: Tensor,
        audio_mask: Tensor,
        text_ids: Tensor,
        text_attention: Tensor,
        text_mask: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        img, aud, txt = self.features(image, audio, audio_length, text_ids, text_attention)
        img, aud, txt = masked(img, image_mask), masked(aud, audio_mask), masked(txt, text_mask)
        fused = self.fuse(torch.cat([img, aud, txt], 1))
        return (
            F.normalize(fused, dim=1),
            F.normalize(img, dim=1),
            F.normalize(aud, dim=1),
            F.normalize(txt, dim=1),
        )


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = Lowercase()
    tokenizer.pre_tokenizer = Whitespace()
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def _real_batch(tokenizer_path: Path) -> dict[str, Tensor]:
    """Two real rows: 'Three' with audio, and an image with no text."""
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    ids = tokenizer.encode("Three SEVEN").ids
    return {
        "image": torch.full((2, 8, 6, 3), 200, dtype=torch.uint8),
        "image_mask": torch.tensor([False, True]),
        "audio": torch.cat([torch.sin(torch.arange(100.0) / 7).unsqueeze(0), torch.zeros(1, 100)]),
        "audio_length": torch.tensor([100, 0]),
        "audio_mask": torch.tensor([True, False]),
        "text_ids": torch.tensor([ids, [0, 0]]),
        "text_attention": torch.tensor([[1, 1], [0, 0]]),
        "text_mask": torch.tensor([True, False]),
    }


def _eager(module: nn.Module, feeds: dict[str, Tensor], config: ModelConfig) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(*(feeds[n] for n in config.graph_input_names()))
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


@pytest.fixture(scope="module")
def classifier_entry(
    tmp_path_factory: pytest.TempPathFactory, tokenizer_path: Path
) -> tuple[Path, nn.Module]:
    torch.manual_seed(0)
    module = TinyClassifier()
    repo = tmp_path_factory.mktemp("repo")
    entry = export_entry(
        module,
        config=_config(),
        labels=LABELS,
        tokenizer_path=tokenizer_path,
        repo_dir=repo,
        check_inputs=[_real_batch(tokenizer_path)],
    )
    return entry, module


def test_classifier_entry_layout(classifier_entry: tuple[Path, nn.Module], tokenizer_path: Path) -> None:
    entry, _ = classifier_entry
    assert entry.name == "tiny"
    assert sorted(p.name for p in entry.parent.iterdir()) == ["tiny"]  # no staging left behind
    assert sorted(p.name for p in entry.iterdir()) == ["1", "config.yaml", "labels.txt", "tokenizer.json"]
    assert sorted(p.name for p in (entry / "1").iterdir()) == ["model.onnx", "model.pt"]
    assert (entry / "labels.txt").read_text() == "cat\ndog\nbird\nfish\n"
    assert (entry / "tokenizer.json").read_bytes() == tokenizer_path.read_bytes()
    config = load_model_config(entry / "config.yaml")
    assert config.name == "tiny" and config.labels_file == "labels.txt"
    assert config.metadata["export"]["formats"] == ["onnx", "torchscript"]
    assert verify_entry(entry) == []


def test_onnx_is_one_file_with_opset_at_least_17(classifier_entry: tuple[Path, nn.Module]) -> None:
    entry, _ = classifier_entry
    model = onnx.load(str(entry / "1" / "model.onnx"), load_external_data=False)
    onnx.checker.check_model(model)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert [i.name for i in model.graph.input] == _config().graph_input_names()
    audio = next(i for i in model.graph.input if i.name == "audio")
    assert all(d.dim_param for d in audio.type.tensor_type.shape.dim)  # batch and T are symbolic


def test_reloaded_runtimes_match_eager_on_batch_of_5(classifier_entry: tuple[Path, nn.Module]) -> None:
    entry, module = classifier_entry
    config = _config()
    rows = [ALL, frozenset({Modality.image}), frozenset({Modality.audio, Modality.text}), ALL, ALL]
    feeds = random_batch(config, rows, 333, 7, 12, torch.Generator().manual_seed(5))
    want = _eager(module, feeds, config)[0]
    session = ort.InferenceSession(str(entry / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    got_onnx = session.run(["class_logits"], {k: v.numpy() for k, v in feeds.items()})[0]
    with jit_deprecation_silenced():
        scripted = torch.jit.load(str(entry / "1" / "model.pt"))
    got_ts = scripted(*(feeds[n] for n in config.graph_input_names())).detach().numpy()
    assert got_onnx.shape == (5, len(LABELS))
    np.testing.assert_allclose(got_onnx, want, atol=1e-5)
    np.testing.assert_allclose(got_ts, want, atol=1e-5)


def test_embedder_exports_four_normalised_outputs(tmp_path: Path, tokenizer_path: Path) -> None:
    torch.manual_seed(1)
    module = TinyEmbedder()
    config = _config("tiny-embed", task="embed")
    entry = export_entry(module, config=config, labels=None, tokenizer_path=tokenizer_path, repo_dir=tmp_path)
    written = load_model_config(entry / "config.yaml")
    assert written.labels_file is None  # an embedder with no labels names none
    assert not (entry / "labels.txt").exists()
    session = ort.InferenceSession(str(entry / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == [o.name for o in config.outputs]
    feeds = random_batch(config, [ALL] * 4, 200, 3, 12, torch.Generator().manual_seed(2))
    outs = session.run(None, {k: v.numpy() for k, v in feeds.items()})
    for got, want in zip(outs, _eager(module, feeds, config), strict=True):
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert verify_entry(entry) == []


class TraceFrozen(TinyClassifier):
    """Scripting fails (numpy), so export traces, which freezes the token count L."""

    def forward(
        self,
        image: Tensor,
        image_mask: Tensor,
        audio: Tensor,
        audio_length: Tensor,
        audio_mask: Tensor,
        text_ids: Tensor,
        text_attention: Tensor,
        text_mask: Tensor,
    ) -> Tensor:
        out = super().forward(
            image, image_mask, audio, audio_length, audio_mask, text_ids, text_attention, text_mask
        )
        return out * float(np.log1p(text_ids.shape[1]))


class OnnxOnly(TinyClassifier):
    """Differs from eager only inside the ONNX export."""

    def forward(
        self,
        image: Tensor,
        image_mask: Tensor,
        audio: Tensor,
        audio_length: Tensor,
        audio_mask: Tensor,
        text_ids: Tensor,
        text_attention: Tensor,
        text_mask: Tensor,
    ) -> Tensor:
        out = super().forward(
            image, image_mask, audio, audio_length, audio_mask, text_ids, text_attention, text_mask
        )
        if torch.compiler.is_exporting():
            out = out + 0.01
        return out


class DataDependent(TinyClassifier):
    """A Python branch on tensor values: torch.export refuses it."""

    def forward(
        self,
        image: Tensor,
        image_mask: Tensor,
        audio: Tensor,
        audio_length: Tensor,
        audio_mask: Tensor,
        text_ids: Tensor,
        text_attention: Tensor,
        text_mask: Tensor,
    ) -> Tensor:
        out = super().forward(
            image, image_mask, audio, audio_length, audio_mask, text_ids, text_attention, text_mask
        )
        if bool(image_mask.all()):
            out = out * 2.0
        return out


class PythonRandom(TinyClassifier):
    """Draws a Python-side random number per call: no exported graph can match it."""

    def forward(
        self,
        image: Tensor,
        image_mask: Tensor,
        audio: Tensor,
        audio_length: Tensor,
        audio_mask: Tensor,
        text_ids: Tensor,
        text_attention: Tensor,
        text_mask: Tensor,
    ) -> Tensor:
        out = super().forward(
            image, image_mask, audio, audio_length, audio_mask, text_ids, text_attention, text_mask
        )
        return out + random.random()


@pytest.mark.parametrize(
    ("module", "backend", "formats", "expected"),
    [
        (
            TraceFrozen(),
            "torchscript",
            ("torchscript",),
            r"torchscript disagrees with eager on output 'class_logits'",
        ),
        (
            OnnxOnly(),
            "onnx",
            ("onnx",),
            r"onnx disagrees with eager on output 'class_logits': max abs diff 0.01",
        ),
        (DataDependent(), "onnx", ("onnx",), r"torch.export could not capture the module"),
        (PythonRandom(), "torchscript", ("torchscript",), r"eager forward is not deterministic"),
    ],
    ids=["trace-frozen", "onnx-only", "data-dependent", "python-random"],
)
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the point of trace-frozen
@pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")  # numpy on a traced shape
def test_disagreeing_module_is_refused_and_nothing_written(
    tmp_path: Path,
    tokenizer_path: Path,
    module: nn.Module,
    backend: str,
    formats: tuple[str, ...],
    expected: str,
) -> None:
    with pytest.raises(ExportError, match=expected):
        export_entry(
            module,
            config=_config(backend=backend),
            labels=LABELS,
            tokenizer_path=tokenizer_path,
            repo_dir=tmp_path,
            formats=formats,
        )
    assert list(tmp_path.iterdir()) == []


class WrongInputs(nn.Module):
    def forward(self, image: Tensor, image_mask: Tensor, audio: Tensor, audio_mask: Tensor) -> Tensor:
        return torch.zeros(image.shape[0], len(LABELS))


def test_graph_inputs_disagreeing_with_config_name_the_input(tmp_path: Path, tokenizer_path: Path) -> None:
    with pytest.raises(
        ExportError, match=r"parameter 3 is 'audio_mask' where the config needs graph input 'audio_length'"
    ):
        export_entry(
            WrongInputs(), config=_config(), labels=LABELS, tokenizer_path=tokenizer_path, repo_dir=tmp_path
        )
    assert list(tmp_path.iterdir()) == []


def test_logits_width_must_match_config(tmp_path: Path, tokenizer_path: Path) -> None:
    with pytest.raises(ExportError, match=r"eager output 'class_logits' is float32 \[1, 5\].*\[1, 4\]"):
        export_entry(
            TinyClassifier(classes=5),
            config=_config(backend="torchscript"),
            labels=LABELS,
            tokenizer_path=tokenizer_path,
            repo_dir=tmp_path,
            formats=("torchscript",),
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("labels", "tokenizer", "expected"),
    [
        (None, True, r"classifier, so export needs labels"),
        (LABELS[:3], True, r"3 labels, but output 'class_logits' has 4 logit columns"),
        (["a", "b", "a", ""], True, r"label 3 is empty; .*duplicate labels \['a'\]"),
        (LABELS, False, r"takes text, so export needs tokenizer_path"),
        (LABELS, "missing", r"tokenizer file is missing"),
    ],
)
def test_missing_or_wrong_side_files_fail_clearly(
    tmp_path: Path, tokenizer_path: Path, labels: list[str] | None, tokenizer: object, expected: str
) -> None:
    paths: dict[object, Path | None] = {True: tokenizer_path, False: None, "missing": tmp_path / "nope.json"}
    path = paths[tokenizer]
    repo = tmp_path / "repo"
    with pytest.raises(ExportError, match=expected):
        export_entry(TinyClassifier(), config=_config(), labels=labels, tokenizer_path=path, repo_dir=repo)
    assert not repo.exists() or list(repo.iterdir()) == []


def test_tokenizer_must_follow_the_pad_unk_contract_when_asked(tmp_path: Path) -> None:
    """The project's own models demand [PAD]=0, [UNK]=1 (models/entries.py asks); others keep their ids."""
    from fusionserve.models.verify import TOKENIZER_SPECIALS

    bad = tmp_path / "tokenizer.json"
    Tokenizer(WordLevel({"[UNK]": 0, "[PAD]": 1, "one": 2}, unk_token="[UNK]")).save(str(bad))
    with pytest.raises(ExportError, match=r"token \[PAD\] has id 1, the contract needs 0"):
        export_entry(
            TinyClassifier(),
            config=_config(),
            labels=LABELS,
            tokenizer_path=bad,
            repo_dir=tmp_path / "r",
            tokenizer_specials=TOKENIZER_SPECIALS,
        )


def test_backend_must_be_exported(tmp_path: Path, tokenizer_path: Path) -> None:
    with pytest.raises(
        ExportError, match=r"backend 'onnx' is not among the exported formats \['torchscript'\]"
    ):
        export_entry(
            TinyClassifier(),
            config=_config(),
            labels=LABELS,
            tokenizer_path=tokenizer_path,
            repo_dir=tmp_path,
            formats=("torchscript",),
        )


def test_check_inputs_are_validated(tmp_path: Path, tokenizer_path: Path) -> None:
    feeds = _real_batch(tokenizer_path)
    feeds["audio"] = feeds["audio"].double()
    with pytest.raises(ExportError, match=r"check_inputs\[0\]: input 'audio' is torch.float64"):
        export_entry(
            TinyClassifier(),
            config=_config(),
            labels=LABELS,
            tokenizer_path=tokenizer_path,
            repo_dir=tmp_path,
            check_inputs=[feeds],
        )


def test_new_version_is_added_and_old_kept(tmp_path: Path, tokenizer_path: Path) -> None:
    config = _config(backend="torchscript")
    kwargs: dict[str, Any] = {
        "labels": LABELS,
        "tokenizer_path": tokenizer_path,
        "repo_dir": tmp_path,
        "formats": ("torchscript",),
    }
    entry = export_entry(TinyClassifier(), config=config, version=1, **kwargs)
    first = (entry / "1" / "model.pt").read_bytes()
    described = config.model_copy(update={"description": "second"})
    export_entry(TinyClassifier(), config=described, version=2, **kwargs)
    assert sorted(p.name for p in entry.iterdir() if p.is_dir()) == ["1", "2"]
    assert (entry / "1" / "model.pt").read_bytes() == first
    assert load_model_config(entry / "config.yaml").description == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]
    assert verify_entry(entry) == []
    second = (entry / "2" / "model.pt").read_bytes()
    export_entry(TinyClassifier(), config=described, version=2, **kwargs)  # replaces version 2 only
    assert sorted(p.name for p in entry.iterdir() if p.is_dir()) == ["1", "2"]
    assert (entry / "2" / "model.pt").read_bytes() != second
    assert (entry / "1" / "model.pt").read_bytes() == first


def test_verify_entry_reports_disagreements(classifier_entry: tuple[Path, nn.Module], tmp_path: Path) -> None:
    source, _ = classifier_entry
    entry = tmp_path / "tiny"
    shutil.copytree(source, entry)
    data = yaml.safe_load((entry / "config.yaml").read_text())
    data["modalities"]["image"]["height"] = 32
    data["outputs"][0]["dims"] = 3
    (entry / "config.yaml").write_text(yaml.safe_dump(data))
    (entry / "tokenizer.json").unlink()
    problems = "\n".join(verify_entry(entry))
    assert "input 'image' axis 1 is 8, the config says 32" in problems
    assert "output 'class_logits' axis 1 is 4, the config says 3" in problems
    assert "4 labels, but output 'class_logits' has 3 logit columns" in problems
    assert "tokenizer file is missing" in problems


def _handmade_onnx(path: Path, external: bool) -> None:
    """A graph like the legacy exporter makes: static batch, the unused audio_length pruned."""
    from onnx import TensorProto, helper, numpy_helper

    inputs = [
        helper.make_tensor_value_info("audio", TensorProto.FLOAT, [2, "T"]),
        helper.make_tensor_value_info("audio_mask", TensorProto.BOOL, [2]),
    ]
    output = helper.make_tensor_value_info("class_logits", TensorProto.FLOAT, [2, 4])
    weight = numpy_helper.from_array(np.ones((1, 4), dtype=np.float32), "weight")
    nodes = [
        helper.make_node("ReduceMean", ["audio"], ["pooled"], keepdims=1, axes=[1]),
        helper.make_node("MatMul", ["pooled", "weight"], ["class_logits"]),
    ]
    graph = helper.make_graph(nodes, "handmade", inputs, [output], initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    onnx.save(model, str(path), save_as_external_data=external, size_threshold=0, location="weights.bin")


def test_verify_flags_pruned_inputs_static_batch_old_opset_and_external_data(tmp_path: Path) -> None:
    from fusionserve.models.verify import onnx_file_problems

    config = ModelConfig.model_validate(
        {
            "name": "audio-only",
            "task": "classify",
            "modalities": {"audio": {"sample_rate": 8000, "max_samples": 900}},
            "outputs": [{"name": "class_logits", "kind": "logits", "dims": 4}],
        }
    )
    path = tmp_path / "model.onnx"
    _handmade_onnx(path, external=True)
    problems = "\n".join(onnx_file_problems(path, config))
    assert "graph lacks input 'audio_length' that the config declares" in problems
    assert "input 'audio' axis 0 (batch) is fixed to 2; it must be dynamic" in problems
    assert "output 'class_logits' axis 0 (batch) is fixed to 2" in problems
    assert "opset is 16, at least 17 is needed" in problems
    assert "1 initializers use external data" in problems


def test_boundary_cases_cover_sizes_below_the_captured_range() -> None:
    from fusionserve.models.parity import boundary_cases

    config = _config()
    cases = boundary_cases(config, {"batch": (2, None), "T": (300, None), "L": (1, 64)}, vocab_size=12)
    shapes = sorted((c.feeds["audio"].shape[0], c.feeds["audio"].shape[1]) for c in cases)
    assert [s for s in shapes if s[0] == 1] == [(1, shapes[0][1])]  # batch 1, usual T
    assert sorted(t for b, t in shapes if b == 3) == [64, 299]  # the server's floor and just below 300
    assert all(int(c.feeds["text_ids"].max()) < 12 for c in cases)
    assert boundary_cases(config, {"batch": (1, None), "T": (64, 900)}, vocab_size=12) == []
