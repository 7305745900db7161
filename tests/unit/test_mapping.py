"""The config's input/output mapping: schema rules, batch feeds, answers, and the load-time graph check."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fusionserve.models.config_doc import DOC_PATH
from fusionserve.service.errors import ConfigError
from fusionserve.service.model.config import ModelConfig, parse_model_config
from fusionserve.service.model.feeds import collate, image_tensor
from fusionserve.service.model.graph import TensorInfo, check_graph, graph_problems
from fusionserve.service.model.outputs import embeddings, predictions
from fusionserve.service.model.rows import DecodedRow

ROOT = Path(__file__).resolve().parents[2]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def mapped(**changes: Any) -> ModelConfig:
    """The worked example's mapping: float NCHW images, fixed 64 BERT-style tokens, no masks."""
    data: dict[str, Any] = {
        "name": "m",
        "task": "classify",
        "modalities": {
            "image": {
                "height": 4,
                "width": 5,
                "input": "pixel_values",
                "mask_input": None,
                "dtype": "float32",
                "layout": "NCHW",
                "scale": 1 / 255,
                "mean": list(MEAN),
                "std": list(STD),
            },
            "text": {
                "max_tokens": 8,
                "input": "input_ids",
                "attention_input": "attention_mask",
                "token_type_input": "token_type_ids",
                "mask_input": None,
                "padding": "fixed",
                "pad_id": 3,
            },
        },
        "outputs": [{"name": "logits", "kind": "logits", "dims": 3}],
    }
    for dotted, value in changes.items():
        target = data
        *path, last = dotted.split(".")
        for key in path:
            target = target[key]
        target[last] = value
    return ModelConfig.model_validate(data)


def test_worked_example_in_the_docs_is_the_example_file() -> None:
    document = DOC_PATH.read_text(encoding="utf-8")
    block = re.search(r"examples/byom/image-text/config.yaml`\):\n\n```yaml\n(.*?)```", document, re.S)
    assert block is not None
    shipped = (ROOT / "examples" / "byom" / "image-text" / "config.yaml").read_text(encoding="utf-8")
    assert yaml.safe_load(block.group(1)) == yaml.safe_load(shipped)
    config = parse_model_config(yaml.safe_load(shipped), "example")
    assert config.graph_input_names() == ["pixel_values", "input_ids", "attention_mask", "token_type_ids"]
    assert [m.value for m in config.modalities.required()] == ["image", "text"]


def test_defaults_are_the_bundled_contract() -> None:
    config = mapped(**{"modalities.image": {"height": 4, "width": 5}, "modalities.text": {"max_tokens": 8}})
    assert config.graph_input_names() == ["image", "image_mask", "text_ids", "text_attention", "text_mask"]
    assert config.modalities.required() == []


@pytest.mark.parametrize(
    ("dotted", "value", "expected"),
    [
        ("modalities.image.dtype", "uint8", "dtype uint8 takes raw pixels"),
        ("modalities.image.std", [0.2, 0.0, 0.2], "std values must be positive"),
        ("modalities.image.resize", "shortest_side", "resize: shortest_side and the shortest_side field"),
        ("modalities.text.attention_input", "input_ids", "mapped to more than one role"),
        ("modalities.image.input", "bad name!", "string_pattern_mismatch|should match pattern"),
    ],
)
def test_inconsistent_mappings_are_refused(dotted: str, value: Any, expected: str) -> None:
    with pytest.raises(Exception, match=expected):
        mapped(**{dotted: value})


def test_images_are_normalised_and_laid_out_on_the_batch() -> None:
    config = mapped()
    spec = config.modalities.image
    assert spec is not None
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
    out = image_tensor(batch, np.array([True, True]), spec)
    want = ((batch / 255.0 - np.asarray(MEAN)) / np.asarray(STD)).transpose(0, 3, 1, 2)
    assert out.dtype == np.float32 and out.shape == (2, 3, 4, 5) and out.flags.c_contiguous
    np.testing.assert_allclose(out, want, atol=1e-5)
    bgr_spec = mapped(**{"modalities.image.channel_order": "BGR"}).modalities.image
    assert bgr_spec is not None
    bgr = image_tensor(batch, np.array([True, False]), bgr_spec)
    # mean and std are in the model's channel order: B first.
    want_bgr = ((batch[..., ::-1] / 255.0 - np.asarray(MEAN)) / np.asarray(STD)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(bgr[0], want_bgr[0], atol=1e-5)
    assert not bgr[1].any()  # an absent row stays zeros


def test_bundled_images_pass_through_untouched() -> None:
    config = mapped(**{"modalities.image": {"height": 4, "width": 5}})
    batch = np.ones((1, 4, 5, 3), dtype=np.uint8)
    assert config.modalities.image is not None
    assert image_tensor(batch, np.array([True]), config.modalities.image) is batch


def test_fixed_text_feeds_pad_id_attention_and_token_types() -> None:
    rows = [
        DecodedRow(image=np.zeros((4, 5, 3), np.uint8), text_ids=np.array([1, 9, 2])),
        DecodedRow(image=np.zeros((4, 5, 3), np.uint8), text_ids=np.array([1, 2])),
    ]
    feeds, padding = collate(rows, mapped())
    assert list(feeds) == ["pixel_values", "input_ids", "attention_mask", "token_type_ids"]
    assert feeds["input_ids"].tolist() == [[1, 9, 2, 3, 3, 3, 3, 3], [1, 2, 3, 3, 3, 3, 3, 3]]
    assert feeds["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]]
    assert not feeds["token_type_ids"].any() and feeds["token_type_ids"].shape == (2, 8)
    assert padding["text"] == pytest.approx(11 / 16)


def test_fixed_audio_window_pads_and_crops() -> None:
    config = parse_model_config(
        {
            "name": "a",
            "task": "classify",
            "modalities": {
                "audio": {
                    "sample_rate": 100,
                    "max_samples": 6,
                    "window": "fixed",
                    "input": "input_values",
                    "length_input": None,
                    "mask_input": None,
                    "dtype": "float16",
                }
            },
            "outputs": [{"name": "logits", "kind": "logits", "dims": 2}],
        },
        "test",
    )
    feeds, _ = collate([DecodedRow(audio=np.ones(3, np.float32))], config)
    assert list(feeds) == ["input_values"]
    assert feeds["input_values"].dtype == np.float16 and feeds["input_values"].tolist() == [
        [1, 1, 1, 0, 0, 0]
    ]


def test_outputs_honour_softmax_applied_and_normalized() -> None:
    config = mapped(**{"outputs": [{"name": "p", "kind": "logits", "dims": 3, "softmax_applied": True}]})
    answer = predictions(config, ["a", "b", "c"], "1", [{"p": np.array([0.2, 0.5, 0.3])}], [["text"]], 2)
    assert answer[0].labels == ["b", "c"] and answer[0].scores == pytest.approx([0.5, 0.3])
    embed = parse_model_config(
        {
            "name": "e",
            "task": "embed",
            "labels_file": None,
            "modalities": {"text": {"max_tokens": 4}},
            "outputs": [{"name": "v", "kind": "embedding", "dims": 2, "normalized": False}],
        },
        "test",
    )
    vector = embeddings(embed, "1", [{"v": np.array([3.0, 4.0], np.float16)}], [["text"]])[0].fused
    assert vector.dtype == np.float32 and vector.tolist() == pytest.approx([0.6, 0.8])


GRAPH_INPUTS = [
    TensorInfo("pixel_values", "float32", (None, 3, 4, 5)),
    TensorInfo("input_ids", "int64", (None, 8)),
    TensorInfo("attention_mask", "int64", (None, 8)),
    TensorInfo("token_type_ids", "int64", (None, 8)),
]
GRAPH_OUTPUTS = [TensorInfo("logits", "float32", (None, 3))]


def test_a_matching_graph_has_no_problems() -> None:
    assert graph_problems(mapped(), GRAPH_INPUTS, GRAPH_OUTPUTS, "model.onnx") == []


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"modalities.image.input": "pixels"},
            "modalities.image.input: graph input 'pixels' is missing in model.onnx",
        ),
        ({"modalities.image.dtype": "float16"}, "modalities.image.dtype: config says float16, graph input"),
        ({"modalities.image.layout": "NHWC"}, "modalities.image.height: config says 4 on axis 1"),
        ({"modalities.image.height": 6}, "modalities.image.height: config says 6 on axis 2"),
        ({"modalities.text.padding": "longest"}, "set padding: fixed and max_tokens: 8"),
        ({"modalities.text.max_tokens": 16}, "modalities.text.max_tokens: config says 16"),
        ({"modalities.text.dtype": "int32"}, "modalities.text.dtype: config says int32"),
        ({"modalities.text.token_type_input": None}, "graph has input 'token_type_ids' that the config"),
        ({"outputs": [{"name": "logits", "kind": "logits", "dims": 4}]}, "outputs[0].dims: config says 4"),
        ({"outputs": [{"name": "scores", "kind": "logits", "dims": 3}]}, "outputs[0].name: output 'scores'"),
    ],
)
def test_each_disagreement_names_the_field_and_both_sides(changes: dict[str, Any], expected: str) -> None:
    problems = graph_problems(mapped(**changes), GRAPH_INPUTS, GRAPH_OUTPUTS, "model.onnx")
    assert any(expected in p for p in problems), problems


def test_a_fixed_batch_axis_is_refused() -> None:
    inputs = [TensorInfo("pixel_values", "float32", (1, 3, 4, 5)), *GRAPH_INPUTS[1:]]
    assert "dynamic batch axis" in " ".join(graph_problems(mapped(), inputs, GRAPH_OUTPUTS, "model.onnx"))


def test_check_graph_raises_one_error_naming_the_config_file(tmp_path: Path) -> None:
    model_path = tmp_path / "m" / "1" / "model.onnx"
    with pytest.raises(ConfigError, match=r"^.*m/config\.yaml: modalities\.image\.input: .*; "):
        check_graph(mapped(**{"modalities.image.input": "x"}), GRAPH_INPUTS, GRAPH_OUTPUTS, model_path)
