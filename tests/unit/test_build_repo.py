"""build-repo on a tiny synthetic dataset: repository layout, report, cache reuse, config."""

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from fusionserve.models.build_repo import BuildOptions, build_repo, cache_key, pick_best
from fusionserve.models.entries import entry_config
from fusionserve.models.train import TrainConfig
from fusionserve.models.verify import verify_entry
from fusionserve.service.model.config import load_model_config

WORDS = ["zero", "one", "two", "three"]


@dataclass
class FakeSplit:
    image: np.ndarray
    audio: np.ndarray
    audio_length: np.ndarray
    text: list[str]
    label: np.ndarray


class FakeDataset:
    """The shape of fusionserve.models.data.dataset.TrimodalDataset, small, labelled in every modality."""

    labels = ["0", "1", "2", "3"]

    def __init__(self) -> None:
        self._splits = {
            name: self._split(n, seed)
            for name, n, seed in (("train", 48, 0), ("val", 16, 1), ("test", 16, 2))
        }

    @staticmethod
    def _split(n: int, seed: int) -> FakeSplit:
        rng = np.random.default_rng(seed)
        label = np.arange(n) % 4
        image = rng.integers(0, 40, (n, 28, 28, 3)).astype(np.uint8)
        for i, d in enumerate(label):
            image[i, 7 * d : 7 * d + 7] = 250
        t = np.arange(4000) / 16000
        audio = np.stack([np.sin(2 * math.pi * 300 * (1 + d) * t) * 0.5 for d in label]).astype(np.float32)
        return FakeSplit(
            image, audio, np.full(n, 4000, dtype=np.int64), [f"a {WORDS[d]}" for d in label], label
        )

    def splits(self) -> dict[str, FakeSplit]:
        return self._splits

    def content_hash(self) -> str:
        return "fake-dataset-v1"


TINY = TrainConfig(encoder_epochs=1, fusion_epochs=1, embed_epochs=1, batch_size=16, dim=32)


@pytest.fixture
def fake_dataset(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The fake dataset in place of the real one; torch's global settings restored afterwards
    (build_repo fixes the thread count and turns on deterministic algorithms)."""
    import fusionserve.models.data.dataset

    monkeypatch.setattr(fusionserve.models.data.dataset, "build_dataset", lambda *a, **k: FakeDataset())
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


@pytest.mark.usefixtures("fake_dataset")
def test_build_repo_writes_both_entries_and_reuses_its_cache(tmp_path: Path) -> None:
    out, cache = tmp_path / "repo", tmp_path / "cache"
    opts = BuildOptions(out=out, cache_dir=cache, config=TINY, strategies=("late", "gated"), progress=False)
    report = build_repo(opts)

    for name in ("digits-fusion", "digits-embed"):
        entry = out / name
        assert verify_entry(entry) == []
        assert (entry / "1" / "model.onnx").is_file() and (entry / "1" / "model.pt").is_file()
        assert (entry / "tokenizer.json").is_file()
    assert (out / "digits-fusion" / "labels.txt").read_text().split() == FakeDataset.labels
    fusion = load_model_config(out / "digits-fusion" / "config.yaml")
    assert fusion.backend == "onnx" and fusion.task == "classify"
    assert fusion.metadata["strategy"] == report["best_strategy"] in ("late", "gated")
    embed = load_model_config(out / "digits-embed" / "config.yaml")
    assert [o.name for o in embed.outputs] == [
        "fused_embedding",
        "image_embedding",
        "audio_embedding",
        "text_embedding",
    ]
    saved = json.loads((out / "report.json").read_text())
    assert set(saved["strategies"]) == {"late", "gated"}
    assert len(saved["digits_fusion_subsets"]) == 7
    assert set(saved["digits_embed_recall_at_1"]) == {"text->image", "audio->image", "audio->text"}
    assert "| strategy |" in (out / "report.md").read_text()

    model_file = out / "digits-fusion" / "1" / "model.onnx"
    before = model_file.stat().st_mtime_ns
    again = build_repo(opts)
    assert again["timings"]["trained_this_run"] == []
    assert again["first_build"] == report["timings"]  # the report keeps the time of the training run
    assert model_file.stat().st_mtime_ns == before  # the identical entry was kept, not rewritten


def test_cache_key_changes_with_what_determines_the_weights() -> None:
    base = cache_key("h", TINY, 0)
    assert cache_key("h", TINY, 0) == base
    assert cache_key("other", TINY, 0) != base
    assert cache_key("h", TINY, 1) != base
    assert cache_key("h", TrainConfig(encoder_epochs=2), 0) != base


def test_pick_best_prefers_validation_then_subset_mean() -> None:
    subsets = {s: 0.5 for s in ("a", "b")}
    results = {
        "x": {"val_acc": 0.9, "val_subsets": subsets},
        "y": {"val_acc": 0.95, "val_subsets": subsets},
        "z": {"val_acc": 0.95, "val_subsets": {"a": 0.6, "b": 0.6}},
    }
    assert pick_best(results) == "z"


def test_entry_config_is_a_valid_model_config() -> None:
    meta = {
        "labels": list("0123456789"),
        "dataset_hash": "h",
        "seed": 0,
        "train_config": {},
        "strategy": "late",
        "dim": 64,
        "fused_dims": 128,
    }
    config = entry_config("digits-fusion", "classifier", meta, "key")
    assert config.modalities.audio is not None and config.modalities.audio.min_samples >= 400
    assert config.batching.max_batch_size == 32
    assert config.outputs[0].name == "class_logits" and config.outputs[0].dims == 10
    by_name = {o.name: o for o in config.outputs}
    assert by_name["fused_embedding"].dims == 128 and by_name["text_embedding"].dims == 64
    attribution = by_name["modality_attribution"]
    assert (attribution.attribution, attribution.modalities, attribution.dims) == (
        "logits",
        ["image", "audio", "text"],
        30,
    )
    assert config.metadata["export_format"] == 2
