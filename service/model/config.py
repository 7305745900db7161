"""The model-repository contract: ``<repo>/<model>/config.yaml`` as a pydantic schema.

``models/`` export writes this file and the server reads it; it is the only
thing the two halves share. The graph's input and output names are fixed by
convention (see ``GRAPH_INPUTS``), so a config only says which modalities a
model takes and how to decode them, and which outputs it yields.

A bad file fails with :class:`~service.errors.ConfigError` naming the file and
the field (``load_model_config``).
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.errors import ConfigError

CONFIG_FILE = "config.yaml"
LABELS_FILE = "labels.txt"
TOKENIZER_FILE = "tokenizer.json"
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}


class Modality(str, Enum):
    image = "image"
    audio = "audio"
    text = "text"


#: Graph input names per modality, in the order models take them. Every model
#: also takes ``<modality>_mask`` (bool ``[B]``): False means "absent", and an
#: absent modality must not influence the outputs.
GRAPH_INPUTS: dict[Modality, tuple[str, ...]] = {
    Modality.image: ("image", "image_mask"),  # uint8 [B,H,W,3], bool [B]
    Modality.audio: ("audio", "audio_length", "audio_mask"),  # f32 [B,T], i64 [B], bool [B]
    Modality.text: ("text_ids", "text_attention", "text_mask"),  # i64 [B,L], i64 [B,L], bool [B]
}


#: The dtype of each graph input (docs/contracts.md §1). Backends check the
#: graph against it at load; :mod:`service.model.feeds` produces exactly these.
INPUT_DTYPES: dict[str, type[np.generic]] = {
    "image": np.uint8,
    "image_mask": np.bool_,
    "audio": np.float32,
    "audio_length": np.int64,
    "audio_mask": np.bool_,
    "text_ids": np.int64,
    "text_attention": np.int64,
    "text_mask": np.bool_,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageSpec(_Strict):
    """How the server turns an uploaded image into the graph's uint8 ``[H,W,3]``."""

    height: int = Field(gt=0, le=4096)
    width: int = Field(gt=0, le=4096)
    resize: Literal["stretch", "letterbox", "center_crop"] = "stretch"
    max_pixels: int = Field(default=40_000_000, gt=0, description="decoded pixel limit (bombs)")
    max_bytes: int = Field(default=20 * 1024 * 1024, gt=0)


class AudioSpec(_Strict):
    """How the server turns an uploaded sound file into a float32 mono waveform."""

    sample_rate: int = Field(gt=0, le=192_000)
    max_samples: int = Field(gt=0, description="longer audio is cropped to this many samples")
    min_samples: int = Field(default=512, gt=0, description="batches are padded to at least this")
    max_input_seconds: float = Field(default=30.0, gt=0, description="longer uploads are refused")
    max_bytes: int = Field(default=20 * 1024 * 1024, gt=0)


class TextSpec(_Strict):
    """How the server tokenises text with the entry's ``tokenizer.json``."""

    max_tokens: int = Field(gt=0, le=4096, description="longer token sequences are truncated")
    max_chars: int = Field(default=2000, gt=0, description="longer texts are refused")


class ModalitiesSpec(_Strict):
    image: ImageSpec | None = None
    audio: AudioSpec | None = None
    text: TextSpec | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> ModalitiesSpec:
        if not self.present():
            raise ValueError("a model must take at least one modality")
        return self

    def present(self) -> list[Modality]:
        return [m for m in Modality if getattr(self, m.value) is not None]


class OutputKind(str, Enum):
    logits = "logits"  # [B, num_labels] → softmax, top-k labels
    embedding = "embedding"  # [B, D], L2-normalised


class OutputSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    kind: OutputKind
    #: For embeddings: which modality this is the embedding of, or "fused".
    source: Literal["fused", "image", "audio", "text"] = "fused"
    dims: int = Field(gt=0)


class Batching(_Strict):
    """Triton's batching vocabulary."""

    max_batch_size: int = Field(default=32, ge=1, le=4096)
    max_queue_delay_ms: float = Field(default=2.0, ge=0)
    preferred_batch_sizes: list[int] = Field(default_factory=list)
    max_queue_size: int = Field(default=256, ge=1)
    default_timeout_ms: float = Field(default=30_000, gt=0)

    @model_validator(mode="after")
    def _preferred_within_max(self) -> Batching:
        bad = [s for s in self.preferred_batch_sizes if not 1 <= s <= self.max_batch_size]
        if bad:
            raise ValueError(f"preferred_batch_sizes {bad} must lie in 1..max_batch_size")
        return self


class InstanceGroup(_Strict):
    kind: Literal["cpu", "gpu"] = "cpu"
    count: int = Field(default=1, ge=1, le=64)
    devices: list[int] = Field(default_factory=list, description="GPU ids; empty = [0]")


class OnnxOptions(_Strict):
    intra_op_threads: int = Field(default=0, ge=0, description="0 = ORT default")
    inter_op_threads: int = Field(default=1, ge=0)
    use_tensorrt: bool = False
    #: ORT's intra-op threads spin while waiting for work. That buys a little
    #: latency on an idle machine but burns the cores that decoding and HTTP
    #: need in a server, so it is off unless asked for.
    allow_spinning: bool = False
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"


class VersionPolicy(_Strict):
    latest: int | None = Field(default=1, ge=1, description="serve the N highest versions")
    specific: list[int] | None = None

    @model_validator(mode="after")
    def _one_policy(self) -> VersionPolicy:
        if self.specific is not None and self.latest not in (None, 1):
            raise ValueError("give either latest or specific, not both")
        return self


class ModelConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    description: str = ""
    backend: Literal["onnx", "torchscript"] = "onnx"
    task: Literal["classify", "embed"]
    modalities: ModalitiesSpec
    outputs: Annotated[list[OutputSpec], Field(min_length=1)]
    labels_file: str | None = LABELS_FILE
    tokenizer_file: str | None = TOKENIZER_FILE
    version_policy: VersionPolicy = VersionPolicy()
    batching: Batching = Batching()
    instance_groups: Annotated[list[InstanceGroup], Field(min_length=1)] = [InstanceGroup()]
    onnx: OnnxOptions = OnnxOptions()
    #: Free-form facts recorded by export (strategy, metrics, training seed).
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        names = [o.name for o in self.outputs]
        if len(set(names)) != len(names):
            raise ValueError(f"output names must be unique, got {names}")
        kinds = {o.kind for o in self.outputs}
        if self.task == "classify" and OutputKind.logits not in kinds:
            raise ValueError("task 'classify' needs an output of kind 'logits'")
        if self.task == "classify" and not self.labels_file:
            raise ValueError("task 'classify' needs labels_file")
        if self.task == "embed" and OutputKind.embedding not in kinds:
            raise ValueError("task 'embed' needs an output of kind 'embedding'")
        if self.modalities.text is not None and not self.tokenizer_file:
            raise ValueError("a model that takes text needs tokenizer_file")
        for out in self.outputs:
            if out.source not in ("fused", *[m.value for m in self.modalities.present()]):
                raise ValueError(
                    f"output {out.name!r} is the embedding of a modality the model does not take"
                )
        return self

    def graph_input_names(self) -> list[str]:
        return [n for m in self.modalities.present() for n in GRAPH_INPUTS[m]]


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "<root>"


def parse_model_config(data: Any, source: str) -> ModelConfig:
    """Validate a parsed config; errors name ``source`` and the failing field."""
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{_field_path(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{source}: invalid model config: {problems}", file=source) from exc


def load_model_config(path: Path) -> ModelConfig:
    """Read and validate ``config.yaml``; every failure names the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read model config: {exc.strerror}", file=str(path)) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}", file=str(path)) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a model config must be a mapping", file=str(path))
    return parse_model_config(data, str(path))


def dump_model_config(config: ModelConfig, path: Path) -> None:
    data = json.loads(config.model_dump_json(exclude_defaults=False))
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def model_config_json_schema() -> dict[str, Any]:
    return ModelConfig.model_json_schema()
