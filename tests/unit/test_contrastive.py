"""The joint-embedding model: outputs, normalisation, absence, and InfoNCE."""

import torch

from fusionserve.models.contrastive import EmbedderSpec, JointEmbedder, info_nce, pairwise_info_nce

VOCAB = 40


def make_inputs(b: int = 4, t: int = 3000, length: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ones = torch.ones(b, dtype=torch.bool)
    return {
        "image": torch.randint(0, 256, (b, 28, 28, 3), dtype=torch.uint8, generator=g),
        "image_mask": ones.clone(),
        "audio": torch.randn(b, t, generator=g) * 0.3,
        "audio_length": torch.full((b,), t, dtype=torch.int64),
        "audio_mask": ones.clone(),
        "text_ids": torch.randint(2, VOCAB, (b, length), generator=g),
        "text_attention": torch.ones(b, length, dtype=torch.int64),
        "text_mask": ones.clone(),
    }


def _model() -> JointEmbedder:
    torch.manual_seed(0)
    return JointEmbedder(EmbedderSpec(vocab_size=VOCAB, embed_dim=32)).eval()


def test_outputs_are_unit_vectors_and_absent_modalities_are_zero() -> None:
    feeds = make_inputs()
    feeds["audio_mask"] = torch.tensor([True, False, True, True])
    with torch.no_grad():
        fused, image, audio, text = _model()(**feeds)
    for out in (fused, image, text):
        assert out.shape == (4, 32)
        assert torch.allclose(out.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.equal(audio[1], torch.zeros(32))
    assert torch.allclose(audio[[0, 2, 3]].norm(dim=-1), torch.ones(3), atol=1e-5)


def test_fused_embedding_ignores_an_absent_modality() -> None:
    model = _model()
    feeds = make_inputs()
    feeds["image_mask"] = torch.tensor([False, True, False, True])
    changed = dict(feeds, image=255 - feeds["image"])
    with torch.no_grad():
        a = model(**feeds)[0]
        b = model(**changed)[0]
    assert (a[[0, 2]] - b[[0, 2]]).abs().max() <= 1e-6
    assert (a[1] - b[1]).abs().max() > 1e-4


def test_info_nce_rewards_aligned_pairs() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=-1)
    scale = torch.tensor(20.0)
    assert info_nce(x, x, scale) < info_nce(x, y, scale)
    assert torch.allclose(info_nce(x, y, scale), info_nce(y, x, scale))
    assert pairwise_info_nce([x, x, x], scale) < pairwise_info_nce([x, y, x], scale)


def test_temperature_is_clamped() -> None:
    model = _model()
    with torch.no_grad():
        model.log_scale.fill_(50.0)
    assert float(model.scale().detach()) == 100.0


def test_torchscript_matches_eager() -> None:
    import warnings

    model = _model()
    feeds = make_inputs()
    feeds["text_mask"] = torch.tensor([True, False, True, True])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(model)
    with torch.no_grad():
        want = model(**feeds)
        got = scripted(*feeds.values())
    for w, g in zip(want, got, strict=True):
        assert (w - g).abs().max() <= 1e-5
