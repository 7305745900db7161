"""The export wrapper's extra outputs: embeddings and per-modality attribution mean what they say."""

from __future__ import annotations

import pytest
import torch

from fusionserve.models.explained import ATTRIBUTION, classifier_outputs, explained
from fusionserve.models.fusion import STRATEGIES
from fusionserve.service.model.config import ModelConfig
from tests.unit.test_fusion import make_inputs, model_for

ORDER = ("image", "audio", "text")


def _feeds(present: dict[str, list[bool]]) -> dict[str, torch.Tensor]:
    feeds = make_inputs()
    for modality, flags in present.items():
        feeds[f"{modality}_mask"] = torch.tensor(flags)
    return feeds


MIXED = {
    "image": [True, False, True, True],
    "audio": [True, True, False, False],
    "text": [True, True, True, False],
}


FAST = ("late", "gated", "attention", "early")


@pytest.mark.parametrize(
    "strategy", [s if s in FAST else pytest.param(s, marks=pytest.mark.slow) for s in sorted(STRATEGIES)]
)
def test_wrapper_keeps_the_logits_and_normalises_the_embeddings(strategy: str) -> None:
    inner = model_for(strategy)
    feeds = _feeds(MIXED)
    with torch.no_grad():
        want = inner(**feeds)
        out = explained(inner)(**feeds)
    torch.testing.assert_close(out[0], want, rtol=0, atol=1e-6)
    for embedding in out[1:5]:
        torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(embedding.shape[0]), rtol=0, atol=1e-4)
    assert len(out) == (6 if strategy in ATTRIBUTION else 5)


def test_late_fusion_logits_are_the_mean_of_the_present_modalities_logits() -> None:
    inner = model_for("late")
    feeds = _feeds(MIXED)
    with torch.no_grad():
        out = explained(inner)(**feeds)
    per = out[5].reshape(out[0].shape[0], 3, -1)
    present = torch.stack([feeds[f"{m}_mask"] for m in ORDER], dim=1)
    mean = (per * present[:, :, None]).sum(dim=1) / present.sum(dim=1, keepdim=True)
    torch.testing.assert_close(mean, out[0], rtol=0, atol=1e-5)
    assert torch.all(per[~present] == 0)


def test_attention_weights_are_a_distribution_over_present_modalities() -> None:
    feeds = _feeds(MIXED)
    with torch.no_grad():
        weights = explained(model_for("attention"))(**feeds)[5]
    present = torch.stack([feeds[f"{m}_mask"] for m in ORDER], dim=1)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(4), rtol=0, atol=1e-5)
    assert torch.all(weights[~present] == 0)


def test_gate_values_lie_in_0_1_and_are_0_when_the_modality_is_absent() -> None:
    feeds = _feeds(MIXED)
    with torch.no_grad():
        gates = explained(model_for("gated"))(**feeds)[5]
    assert gates.shape == (4, 2)  # audio, text
    assert torch.all((gates >= 0) & (gates <= 1))
    absent = ~torch.stack([feeds["audio_mask"], feeds["text_mask"]], dim=1)
    assert torch.all(gates[absent] == 0) and torch.all(gates[~absent] > 0)


@pytest.mark.parametrize("strategy", ["late", "gated", "attention", "early"])
def test_declared_outputs_form_a_valid_config(strategy: str) -> None:
    outputs = classifier_outputs(strategy, 10, 128, 64)
    config = ModelConfig.model_validate(
        {
            "name": "m",
            "task": "classify",
            "modalities": {
                "image": {"height": 28, "width": 28},
                "text": {"max_tokens": 4},
                "audio": {"sample_rate": 16000, "max_samples": 16000},
            },
            "outputs": outputs,
        }
    )
    kinds = [o.kind.value for o in config.outputs]
    assert kinds[:5] == ["logits", "embedding", "embedding", "embedding", "embedding"]
    assert ("attribution" in kinds) == (strategy in ATTRIBUTION)


@pytest.mark.parametrize(
    "strategy",
    [
        "late",
        pytest.param("gated", marks=pytest.mark.slow),
        pytest.param("attention", marks=pytest.mark.slow),
    ],
)
def test_wrappers_script_for_torchscript(strategy: str) -> None:
    from fusionserve.models.verify import jit_deprecation_silenced

    module = explained(model_for(strategy))
    feeds = _feeds(MIXED)
    with jit_deprecation_silenced():
        scripted = torch.jit.script(module)
    with torch.no_grad():
        for got, want in zip(scripted(**feeds), module(**feeds), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", sorted(ATTRIBUTION))
def test_export_writes_the_attribution_as_a_graph_output(strategy: str, tmp_path) -> None:
    """Through ``export_entry``: ONNX and TorchScript agree with eager on every declared output."""
    import onnxruntime as ort

    from fusionserve.models.entries import MIN_AUDIO_SAMPLES
    from fusionserve.models.export import export_entry
    from fusionserve.service.model.config import load_model_config
    from tests.fixtures_media import write_wordlevel_tokenizer
    from tests.unit.test_fusion import VOCAB

    inner = model_for(strategy)
    config = ModelConfig.model_validate(
        {
            "name": f"x-{strategy}",
            "task": "classify",
            "modalities": {
                "image": {"height": 28, "width": 28},
                "audio": {"sample_rate": 16000, "max_samples": 16000, "min_samples": MIN_AUDIO_SAMPLES},
                "text": {"max_tokens": 16},
            },
            "outputs": classifier_outputs(strategy, 10, inner.fusion.out_dim, inner.spec.dim),
        }
    )
    words = [f"w{i}" for i in range(VOCAB - 2)]
    tokenizer = write_wordlevel_tokenizer(tmp_path / "tokenizer.json", words)
    entry = export_entry(
        explained(inner),
        config=config,
        labels=[str(i) for i in range(10)],
        tokenizer_path=tokenizer,
        repo_dir=tmp_path / "repo",
    )
    written = load_model_config(entry / "config.yaml")
    attribution = next(o for o in written.outputs if o.name == "modality_attribution")
    assert attribution.attribution == ATTRIBUTION[strategy][0]
    session = ort.InferenceSession(str(entry / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert "modality_attribution" in [o.name for o in session.get_outputs()]
