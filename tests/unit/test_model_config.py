"""service/model_config.py: good configs round-trip, bad ones name the file and the field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from fusionserve.models.config_doc import DOC_PATH, render_generated, splice
from fusionserve.service.errors import ConfigError
from fusionserve.service.model.config import (
    ModelConfig,
    dump_model_config,
    load_model_config,
    parse_model_config,
)


def _good() -> dict[str, Any]:
    return {
        "name": "digits-fusion",
        "task": "classify",
        "modalities": {
            "image": {"height": 28, "width": 28, "resize": "letterbox"},
            "audio": {"sample_rate": 16000, "max_samples": 16000},
            "text": {"max_tokens": 16},
        },
        "outputs": [{"name": "class_logits", "kind": "logits", "dims": 10}],
        "batching": {"max_batch_size": 16, "preferred_batch_sizes": [4, 8]},
        "instance_groups": [{"kind": "gpu", "count": 2, "devices": [0, 1]}],
        "metadata": {"strategy": "gated", "val_accuracy": 0.98},
    }


def test_good_config_round_trips(tmp_path: Path) -> None:
    config = ModelConfig.model_validate(_good())
    path = tmp_path / "config.yaml"
    dump_model_config(config, path)
    again = load_model_config(path)
    assert again == config
    image, audio, text = ["image", "image_mask"], ["audio", "audio_length", "audio_mask"], ["text_ids"]
    assert again.graph_input_names() == [*image, *audio, *text, "text_attention", "text_mask"]
    dump_model_config(again, tmp_path / "again.yaml")
    assert (tmp_path / "again.yaml").read_text() == path.read_text()


def _set(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    *parents, leaf = dotted.split(".")
    node: Any = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is _DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return data


_DELETE = object()


@pytest.mark.parametrize(
    ("dotted", "value", "expected"),
    [
        ("colour", "red", r"colour: Extra inputs are not permitted"),
        ("modalities.image.depth", 3, r"modalities\.image\.depth: Extra inputs are not permitted"),
        (
            "modalities.audio.sample_rate",
            "fast",
            r"modalities\.audio\.sample_rate: Input should be a valid integer",
        ),
        ("outputs.0.dims", 0, r"outputs\.0\.dims: Input should be greater than 0"),
        ("task", _DELETE, r"task: Field required"),
        ("outputs.0.kind", "embedding", r"task 'classify' needs an output of kind 'logits'"),
        ("batching.preferred_batch_sizes", [8, 64], r"batching: .*preferred_batch_sizes \[64\] must lie in"),
        ("modalities", {}, r"modalities: .*at least one modality"),
        ("name", "bad name!", r"name: String should match pattern"),
    ],
    ids=[
        "unknown-field",
        "unknown-nested-field",
        "wrong-type",
        "out-of-range",
        "missing-field",
        "classify-without-logits",
        "preferred-over-max",
        "no-modality",
        "bad-name",
    ],
)
def test_bad_config_names_file_and_field(tmp_path: Path, dotted: str, value: Any, expected: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_set(_good(), dotted, value)))
    with pytest.raises(ConfigError) as info:
        load_model_config(path)
    assert info.value.message.startswith(f"{path}: invalid model config: ")
    assert re.search(expected, info.value.message), info.value.message
    assert info.value.details["file"] == str(path)
    assert info.value.code == "config_error"


def test_output_source_of_absent_modality_is_refused() -> None:
    data = _good()
    data["task"] = "embed"
    del data["modalities"]["audio"]
    data["outputs"] = [
        {"name": "fused_embedding", "kind": "embedding", "dims": 8},
        {"name": "audio_embedding", "kind": "embedding", "source": "audio", "dims": 8},
    ]
    with pytest.raises(
        ConfigError, match=r"cfg\.yaml: .*output 'audio_embedding' is the embedding of a modality"
    ):
        parse_model_config(data, "cfg.yaml")


def test_text_model_needs_a_tokenizer_file() -> None:
    data = _good()
    data["tokenizer_file"] = None
    with pytest.raises(ConfigError, match=r"takes text needs tokenizer_file"):
        parse_model_config(data, "cfg.yaml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: [unclosed\n", r"not valid YAML"),
        ("- a\n- b\n", r"a model config must be a mapping"),
        ("", r"a model config must be a mapping"),
    ],
)
def test_unparseable_file_names_the_file(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_model_config(path)
    assert info.value.message.startswith(f"{path}: ")


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "config.yaml"
    with pytest.raises(ConfigError, match=r"cannot read model config") as info:
        load_model_config(path)
    assert str(path) in info.value.message


def test_committed_schema_reference_is_fresh() -> None:
    """docs/model-config.md must hold exactly what `python -m fusionserve.models.config_doc` generates."""
    document = DOC_PATH.read_text(encoding="utf-8")
    assert splice(document, render_generated()) == document, (
        "stale: run python -m fusionserve.models.config_doc"
    )


def test_schema_reference_tracks_the_schema() -> None:
    schema = ModelConfig.model_json_schema()
    schema["properties"]["new_field"] = {"type": "integer", "default": 3}
    assert "| `new_field` | integer | `3` |" in render_generated(schema)
    assert "| `new_field` |" not in render_generated()


def test_documented_example_is_valid() -> None:
    document = DOC_PATH.read_text(encoding="utf-8")
    example = re.search(r"## Example\s+```yaml\n(.*?)```", document, re.S)
    assert example is not None
    config = parse_model_config(yaml.safe_load(example.group(1)), "docs/model-config.md")
    assert config.name == "digits-fusion"
