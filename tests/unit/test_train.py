"""Training: a tiny run learns, runs are deterministic, dropout never empties a row,
checkpoints round-trip."""

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from fusionserve.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fusionserve.models.features import SUBSETS, SplitTensors, encode_split, fast_logmel, modality_dropout
from fusionserve.models.train import TrainConfig, train_encoders, train_fusion

VOCAB = 16
TINY = TrainConfig(encoder_epochs=4, fusion_epochs=4, embed_epochs=2, batch_size=32, lr=3e-3, dim=32)


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


def synthetic_split(n: int, seed: int) -> SplitTensors:
    """Rows whose every modality carries the label: a bright band, a tone, a token."""
    g = torch.Generator().manual_seed(seed)
    label = torch.arange(n) % 4
    image = torch.randint(0, 40, (n, 28, 28, 3), dtype=torch.uint8, generator=g)
    for i in range(n):
        image[i, 7 * int(label[i]) : 7 * int(label[i]) + 7] = 250
    t = 3200
    freq = 300.0 * (1 + label.float())[:, None]
    audio = torch.sin(2 * math.pi * freq * torch.arange(t)[None, :] / 16000) * 0.5
    audio = audio + 0.05 * torch.randn(n, t, generator=g)
    ids = torch.stack([label + 2, torch.randint(6, VOCAB, (n,), generator=g)], dim=1)
    return SplitTensors(
        image, audio, torch.full((n,), t, dtype=torch.int64), ids, torch.ones_like(ids), label
    )


def _stage1(seed: int = 0) -> tuple[Any, ...]:
    from fusionserve.models.encoders import LogMel

    train, val = synthetic_split(96, 0), synthetic_split(32, 1)
    front = LogMel()
    logmel = {
        "train": fast_logmel(front, train.audio, train.audio_length),
        "val": fast_logmel(front, val.audio, val.audio_length),
    }
    encoders, history = train_encoders(train, val, logmel, VOCAB, TINY, seed, num_classes=4)
    return train, val, logmel, encoders, history


def test_encoder_training_lowers_the_loss_and_learns() -> None:
    *_, history = _stage1()
    assert history[-1]["loss"] < history[0]["loss"]
    assert max(history[-1][f"val_acc_{m}"] for m in ("image", "audio", "text")) > 0.5


def test_fusion_training_lowers_the_loss_and_is_deterministic() -> None:
    train, val, logmel, encoders, _ = _stage1()
    ftrain = encode_split(encoders, train, logmel["train"])
    fval = encode_split(encoders, val, logmel["val"])
    model_a, hist_a = train_fusion("gated", encoders, ftrain, fval, VOCAB, TINY, seed=3, num_classes=4)
    model_b, hist_b = train_fusion("gated", encoders, ftrain, fval, VOCAB, TINY, seed=3, num_classes=4)
    assert hist_a[-1]["loss"] < hist_a[0]["loss"]
    assert hist_a == hist_b
    for (name, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_modality_dropout_covers_every_subset_and_never_empties_a_row() -> None:
    present = modality_dropout(2000, torch.Generator().manual_seed(0))
    stacked = torch.stack(present, dim=1)
    assert stacked.any(dim=1).all()
    seen = {tuple(bool(x) for x in row) for row in stacked}
    assert seen == set(SUBSETS.values())


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    from fusionserve.models.classifier import ClassifierSpec, FusionClassifier

    torch.manual_seed(0)
    model = FusionClassifier(ClassifierSpec(strategy="late", vocab_size=VOCAB, dim=32)).eval()
    path = tmp_path / "late.pt"
    save_checkpoint(path, "classifier", model.spec.to_dict(), model, {"labels": ["a", "b"]})
    ckpt = load_checkpoint(path)
    rebuilt = ckpt.build()
    feeds = synthetic_split(3, 5).graph_inputs()
    with torch.no_grad():
        assert torch.equal(model(**feeds), rebuilt(**feeds))
    assert ckpt.meta["labels"] == ["a", "b"]


def test_load_checkpoint_names_a_foreign_file(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="not a fusionserve checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
