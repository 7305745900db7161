"""Fusion strategies and the classifier: shapes, absent-modality and padding independence,
gradients, TorchScript parity, and the registry's error."""

import warnings

import pytest
import torch

from fusionserve.models.classifier import ClassifierSpec, FusionClassifier
from fusionserve.models.fusion import STRATEGIES, UnknownStrategyError, build_strategy

VOCAB = 40
B, T, L = 4, 4000, 6


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


def make_inputs(b: int = B, t: int = T, length: int = L, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1200, t + 1, (b,), generator=g)
    audio = torch.randn(b, t, generator=g) * 0.3
    audio = audio * (torch.arange(t)[None, :] < lengths[:, None])
    tok_len = torch.randint(1, length + 1, (b,), generator=g)
    attention = (torch.arange(length)[None, :] < tok_len[:, None]).long()
    ids = torch.randint(2, VOCAB, (b, length), generator=g) * attention
    ones = torch.ones(b, dtype=torch.bool)
    return {
        "image": torch.randint(0, 256, (b, 28, 28, 3), dtype=torch.uint8, generator=g),
        "image_mask": ones.clone(),
        "audio": audio,
        "audio_length": lengths,
        "audio_mask": ones.clone(),
        "text_ids": ids,
        "text_attention": attention,
        "text_mask": ones.clone(),
    }


def model_for(strategy: str, seed: int = 0) -> FusionClassifier:
    torch.manual_seed(seed)
    return FusionClassifier(ClassifierSpec(strategy=strategy, vocab_size=VOCAB)).eval()


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_logits_shape_and_dtype(strategy: str) -> None:
    out = model_for(strategy)(**make_inputs())
    assert out.shape == (B, 10)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def _scramble(feeds: dict[str, torch.Tensor], modality: str, seed: int) -> dict[str, torch.Tensor]:
    """Replace one modality's tensors with unrelated values (other lengths too)."""
    other = make_inputs(seed=seed)
    changed = dict(feeds)
    if modality == "image":
        changed["image"] = 255 - other["image"]
    elif modality == "audio":
        changed["audio"] = other["audio"] * 5.0
        changed["audio_length"] = other["audio_length"]
    else:
        changed["text_ids"] = (other["text_ids"] + 3) % VOCAB
        changed["text_attention"] = torch.ones_like(other["text_attention"])
    return changed


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("modality", ["image", "audio", "text"])
def test_absent_modality_has_no_influence(strategy: str, modality: str) -> None:
    model = model_for(strategy)
    feeds = make_inputs()
    # rows 0 and 2 lack the modality; row 3 also lacks another one, row 1 has everything
    feeds[f"{modality}_mask"] = torch.tensor([False, True, False, False])
    other = {"image": "audio", "audio": "text", "text": "image"}[modality]
    feeds[f"{other}_mask"] = torch.tensor([True, True, True, False])
    with torch.no_grad():
        before = model(**feeds)
        after = model(**_scramble(feeds, modality, seed=7))
    absent = ~feeds[f"{modality}_mask"]
    assert (before[absent] - after[absent]).abs().max() <= 1e-6
    # and the test can fail: the row that has the modality does change
    assert (before[1] - after[1]).abs().max() > 1e-4


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_padding_does_not_change_a_row(strategy: str) -> None:
    model = model_for(strategy)
    feeds = make_inputs()
    longer = dict(feeds)
    longer["audio"] = torch.cat([feeds["audio"], torch.zeros(B, 2345)], dim=1)
    longer["text_ids"] = torch.cat([feeds["text_ids"], torch.zeros(B, 5, dtype=torch.int64)], dim=1)
    longer["text_attention"] = torch.cat(
        [feeds["text_attention"], torch.zeros(B, 5, dtype=torch.int64)], dim=1
    )
    with torch.no_grad():
        diff = (model(**feeds) - model(**longer)).abs().max()
    assert diff <= 1e-5


def test_audio_row_padded_to_its_own_length_matches_the_batch() -> None:
    """The contract's case: one row alone (T = its length) versus inside a longer batch."""
    model = model_for("singlestream")
    feeds = make_inputs()
    n = int(feeds["audio_length"][0])
    alone = {k: v[:1] for k, v in feeds.items()}
    alone["audio"] = alone["audio"][:, :n]
    with torch.no_grad():
        diff = (model(**feeds)[0] - model(**alone)[0]).abs().max()
    assert diff <= 1e-5


def test_gradients_reach_every_encoder() -> None:
    model = model_for("crossmodal").train()
    feeds = make_inputs()
    loss = torch.nn.functional.cross_entropy(model(**feeds), torch.arange(B) % 10)
    loss.backward()
    for name in ("image", "audio", "text"):
        encoder = getattr(model.encoders, name)
        grads = [p.grad for p in encoder.parameters() if p.grad is not None]
        assert grads, f"{name} encoder got no gradient"
        assert sum(float(g.abs().sum()) for g in grads) > 0, f"{name} encoder gradient is zero"


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_torchscript_matches_eager(strategy: str) -> None:
    model = model_for(strategy)
    feeds = make_inputs()
    feeds["text_mask"] = torch.tensor([True, False, True, False])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(model)
    with torch.no_grad():
        want = model(**feeds)
        got = scripted(*feeds.values())
    assert (want - got).abs().max() <= 1e-5


def test_unknown_strategy_names_the_choices() -> None:
    with pytest.raises(
        UnknownStrategyError, match=r"unknown fusion strategy 'fancy'.*crossmodal.*singlestream"
    ):
        build_strategy("fancy", 64)


def test_every_strategy_has_its_own_output_dim() -> None:
    for name in STRATEGIES:
        strategy = build_strategy(name, 32)
        assert strategy.out_dim > 0
