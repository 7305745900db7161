"""The model-repository contract: ``<repo>/<model>/config.yaml`` as a pydantic schema.

``models/`` export writes this file and the server reads it; it is the only
thing the two halves share. A config says which modalities a model takes, how
to decode each one, and how each becomes the graph's tensors (names, dtype,
layout, normalisation, padding: the *mapping*), and which outputs it yields.
Every mapping field defaults to the project's own export contract
(``GRAPH_INPUTS``, docs/contracts.md §1), so a config that says nothing about
tensors describes a graph exported by ``fusionserve export``.

A bad file fails with :class:`~fusionserve.service.errors.ConfigError` naming the file and
the field (``load_model_config``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fusionserve.service.errors import ConfigError

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
#: graph against it at load; :mod:`fusionserve.service.model.feeds` produces exactly these.
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


#: A graph tensor name: what exporters write (``input_ids``, ``pixel_values``,
#: ``input.1``, ``serving_default:0``), nothing that could break a log line.
TensorName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.:/-]{0,127}$")]
#: One value per colour channel, in the model's channel order.
ChannelValues = tuple[float, float, float]


class ImageSpec(_Strict):
    """How the server turns an upload into the graph's image tensor.

    Decoding always yields uint8 RGB ``[H,W,3]`` per row; ``dtype``, ``scale``,
    ``mean``, ``std``, ``channel_order`` and ``layout`` are applied to the
    whole batch at once, vectorised: ``(pixel * scale - mean) / std``.
    """

    height: int = Field(gt=0, le=4096)
    width: int = Field(gt=0, le=4096)
    resize: Literal["stretch", "letterbox", "center_crop", "shortest_side"] = Field(
        default="stretch",
        description="shortest_side: scale the shortest side to shortest_side, then crop the centre",
    )
    shortest_side: int | None = Field(
        default=None, gt=0, le=8192, description="with resize: shortest_side (torchvision's Resize(N))"
    )
    max_pixels: int = Field(default=40_000_000, gt=0, description="decoded pixel limit (bombs)")
    max_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    input: TensorName = Field(default="image", description="graph input that takes the image")
    mask_input: TensorName | None = Field(
        default="image_mask", description="bool [B] presence input; null: every request must carry an image"
    )
    layout: Literal["NHWC", "NCHW"] = "NHWC"
    dtype: Literal["uint8", "float32", "float16"] = "uint8"
    channel_order: Literal["RGB", "BGR"] = "RGB"
    scale: float = Field(default=1.0, gt=0, description="pixels (0..255) are multiplied by this first")
    mean: ChannelValues | None = Field(default=None, description="subtracted after scale, per channel")
    std: ChannelValues | None = Field(default=None, description="divided by after mean, per channel")

    @model_validator(mode="after")
    def _consistent(self) -> ImageSpec:
        if self.dtype == "uint8" and (self.scale != 1.0 or self.mean is not None or self.std is not None):
            raise ValueError(
                "dtype uint8 takes raw pixels: scale, mean and std need dtype float32 or float16"
            )
        if self.std is not None and any(v <= 0 for v in self.std):
            raise ValueError(f"std values must be positive, got {list(self.std)}")
        if (self.resize == "shortest_side") != (self.shortest_side is not None):
            raise ValueError("resize: shortest_side and the shortest_side field go together")
        if self.shortest_side is not None and self.shortest_side < max(self.height, self.width):
            raise ValueError(
                f"shortest_side {self.shortest_side} is smaller than the crop {self.height}x{self.width}"
            )
        return self

    @property
    def normalises(self) -> bool:
        return self.dtype != "uint8"


class AudioSpec(_Strict):
    """How the server turns an uploaded sound file into the graph's mono waveform tensor."""

    sample_rate: int = Field(gt=0, le=192_000)
    max_samples: int = Field(gt=0, description="longer audio is cropped to this many samples")
    min_samples: int = Field(default=512, gt=0, description="batches are padded to at least this")
    max_input_seconds: float = Field(default=30.0, gt=0, description="longer uploads are refused")
    max_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    max_decode_ms: float = Field(
        default=5000.0, gt=0, description="compressed audio taking longer to decode is refused (413)"
    )
    input: TensorName = Field(default="audio", description="graph input that takes the waveform [B, T]")
    length_input: TensorName | None = Field(
        default="audio_length", description="int64 [B] valid samples per row; null: the graph takes none"
    )
    mask_input: TensorName | None = Field(
        default="audio_mask", description="bool [B] presence input; null: every request must carry audio"
    )
    window: Literal["dynamic", "fixed"] = Field(
        default="dynamic",
        description="dynamic: pad to the batch's longest row; fixed: pad or crop every row to max_samples",
    )
    dtype: Literal["float32", "float16"] = "float32"


class TextSpec(_Strict):
    """How the server tokenises text with the entry's ``tokenizer.json`` and feeds the ids."""

    max_tokens: int = Field(gt=0, le=4096, description="longer token sequences are truncated")
    max_chars: int = Field(default=2000, gt=0, description="longer texts are refused")
    input: TensorName = Field(default="text_ids", description="graph input that takes the token ids")
    attention_input: TensorName | None = Field(
        default="text_attention", description="[B, L] 1 = real token, 0 = padding; null: none"
    )
    token_type_input: TensorName | None = Field(
        default=None, description="[B, L] token type ids (BERT's token_type_ids, all 0); null: none"
    )
    mask_input: TensorName | None = Field(
        default="text_mask", description="bool [B] presence input; null: every request must carry text"
    )
    special_tokens: bool = Field(
        default=False,
        description="run the tokenizer's post-processor ([CLS] ... [SEP]); counted in max_tokens",
    )
    padding: Literal["longest", "fixed"] = Field(
        default="longest", description="longest: pad to the longest row of the batch; fixed: to max_tokens"
    )
    pad_id: int | None = Field(
        default=None, ge=0, description="id written in padding; null: the tokenizer file's pad id, else 0"
    )
    truncation: Literal["right", "left"] = Field(
        default="right", description="which end loses tokens beyond max_tokens"
    )
    dtype: Literal["int64", "int32"] = Field(default="int64", description="of ids, attention and token types")


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

    def required(self) -> list[Modality]:
        """Modalities every request must carry: the graph has no presence mask for them."""
        return [m for m in self.present() if getattr(self, m.value).mask_input is None]


class OutputKind(str, Enum):
    logits = "logits"  # [B, num_labels] → softmax, top-k labels
    embedding = "embedding"  # [B, D], L2-normalised
    attribution = "attribution"  # [B, dims]: how much each modality contributed (see ``attribution``)


#: What an attribution output's numbers are (README "Attribution" says more):
#: ``logits``: per listed modality, the class logits it alone gives (``[B, M*C]``,
#: modality-major; the model's logits are their mean over present modalities);
#: ``gate``: per listed modality, its mean update gate in [0, 1] (``[B, M]``);
#: ``attention``: softmax weights over the listed modalities (``[B, M]``).
AttributionKind = Literal["logits", "gate", "attention"]


class OutputSpec(_Strict):
    name: TensorName = Field(description="the graph output (ONNX) or dict key (TorchScript)")
    kind: OutputKind
    #: For embeddings: which modality this is the embedding of, or "fused".
    source: Literal["fused", "image", "audio", "text"] = "fused"
    dims: int = Field(gt=0)
    softmax_applied: bool = Field(
        default=False, description="logits: the graph already returns probabilities (no softmax here)"
    )
    normalized: bool = Field(
        default=True, description="embedding: the graph already L2-normalises it (false: the server does)"
    )
    index: int | None = Field(
        default=None,
        ge=0,
        description="TorchScript tuple outputs: position in the tuple (default: list order)",
    )

    #: For attribution outputs: what the numbers are, and the modalities of its columns.
    attribution: AttributionKind | None = None
    modalities: list[Literal["image", "audio", "text"]] | None = None

    @model_validator(mode="after")
    def _attribution_declared(self) -> OutputSpec:
        is_attribution = self.kind == OutputKind.attribution
        if is_attribution != (self.attribution is not None) or is_attribution != bool(self.modalities):
            raise ValueError(
                f"output {self.name!r}: 'attribution' and 'modalities' "
                "are given exactly for kind 'attribution'"
            )
        if is_attribution and self.modalities and self.dims % len(self.modalities):
            raise ValueError(f"output {self.name!r}: dims must be a multiple of len(modalities)")
        return self


class Costs(_Strict):
    """What one item costs, from the size of what it fed the model (README "Cost-aware batching").

    ``row + image_megapixel * megapixels + audio_second * seconds + text_token * tokens``;
    megapixels are the image as decoded (before resizing), seconds and tokens as fed to the model.
    """

    row: float = Field(default=1.0, ge=0)
    image_megapixel: float = Field(default=0.0, ge=0)
    audio_second: float = Field(default=0.0, ge=0)
    text_token: float = Field(default=0.0, ge=0)

    def of(self, sizes: dict[str, float]) -> float:
        """The cost of one decoded item with ``sizes`` (pixels, seconds, tokens by modality)."""
        return (
            self.row
            + self.image_megapixel * sizes.get("image", 0.0) / 1e6
            + self.audio_second * sizes.get("audio", 0.0)
            + self.text_token * sizes.get("text", 0.0)
        )


@dataclass(frozen=True)
class GraphInput:
    """One graph input the config maps: its role, name, dtype and shape, and the field that names it.

    ``shape`` holds ints for fixed axes and ``"batch"``, ``"T"``, ``"L"`` for
    dynamic ones.
    """

    role: str
    name: str
    dtype: str
    shape: tuple[int | str, ...]
    field: str


class Batching(_Strict):
    """Triton's batching vocabulary, plus cost bounds."""

    max_batch_size: int = Field(default=32, ge=1, le=4096)
    max_queue_delay_ms: float = Field(default=2.0, ge=0)
    preferred_batch_sizes: list[int] = Field(default_factory=list)
    max_queue_size: int = Field(default=256, ge=1)
    default_timeout_ms: float = Field(default=30_000, gt=0)
    costs: Costs = Costs()
    #: A batch closes when its rows reach max_batch_size or their cost reaches this
    #: (a row costlier than the bound still goes, alone).
    max_batch_cost: float | None = Field(default=None, gt=0)
    #: An item is refused (429) when the cost of the items the model version holds
    #: (decoding, queued, computing) plus its own would pass this, unless it holds none.
    #: Checked after the header is read, before pixels are decoded.
    max_queue_cost: float | None = Field(default=None, gt=0)

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
    timeout_ms: float = Field(
        default=30_000,
        gt=0,
        description="a batch running longer fails (503) and its instance is replaced by a fresh one",
    )


class OnnxOptions(_Strict):
    intra_op_threads: int = Field(
        default=0, ge=0, description="0 = ORT default (its host core count), capped by the CPUs allowed"
    )
    inter_op_threads: int = Field(default=1, ge=0)
    use_tensorrt: bool = False
    #: ORT's intra-op threads spin while waiting for work. That buys a little
    #: latency on an idle machine but burns the cores that decoding and HTTP
    #: need in a server, so it is off unless asked for.
    allow_spinning: bool = False
    #: A batch that computes while no other does (a lone request) runs on a
    #: second session using every available core; under load the instances'
    #: own single-threaded sessions run side by side (docs/performance.md).
    #: Only for CPU instances with ``intra_op_threads: 1``, and only where it
    #: measured faster: each instance times both sessions after warm-up and
    #: drops the wide one unless a lone batch runs in < 0.9x the time.
    adaptive_intra_op: bool = True
    #: GPU instances (service/runtimes/gpu_options.py). TensorRT builds fp16 kernels.
    fp16: bool = False
    #: Where TensorRT keeps built engines; unset = ``$FUSIONSERVE_HOME/tensorrt-engines``.
    tensorrt_cache_dir: str | None = None
    #: GPU sessions bind inputs and outputs (one copy each way) instead of ``session.run``.
    io_binding: bool = True
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
    #: The entry's own preprocess/postprocess module (service/model/code.py); runs
    #: only when the server allows repository code.
    code_file: str | None = None
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
            taken = [m.value for m in self.modalities.present()]
            if out.modalities and not set(out.modalities) <= set(taken):
                raise ValueError(f"output {out.name!r} attributes to a modality the model does not take")
            if out.source not in ("fused", *[m.value for m in self.modalities.present()]):
                raise ValueError(
                    f"output {out.name!r} is the embedding of a modality the model does not take"
                )
        indices = [o.index for o in self.outputs if o.index is not None]
        if len(set(indices)) != len(indices):
            raise ValueError(f"output indices must be unique, got {indices}")
        inputs = [g.name for g in self.graph_inputs()]
        dupes = sorted({n for n in inputs if inputs.count(n) > 1})
        if dupes:
            raise ValueError(f"graph input names {dupes} are mapped to more than one role")
        return self

    def graph_inputs(self) -> list[GraphInput]:
        """Every graph input the mapping names, in the order of the project's contract."""
        found: list[GraphInput] = []
        spec = self.modalities

        def add(role: str, name: str | None, dtype: str, shape: tuple[int | str, ...], field: str) -> None:
            if name is not None:
                found.append(GraphInput(role, name, dtype, shape, f"modalities.{field}"))

        if spec.image is not None:
            im = spec.image
            hw: tuple[int | str, ...] = (im.height, im.width)
            shape = ("batch", *hw, 3) if im.layout == "NHWC" else ("batch", 3, *hw)
            add("image", im.input, im.dtype, shape, "image.input")
            add("image_mask", im.mask_input, "bool", ("batch",), "image.mask_input")
        if spec.audio is not None:
            au = spec.audio
            t: int | str = au.max_samples if au.window == "fixed" else "T"
            add("audio", au.input, au.dtype, ("batch", t), "audio.input")
            add("audio_length", au.length_input, "int64", ("batch",), "audio.length_input")
            add("audio_mask", au.mask_input, "bool", ("batch",), "audio.mask_input")
        if spec.text is not None:
            tx = spec.text
            length: int | str = tx.max_tokens if tx.padding == "fixed" else "L"
            add("text_ids", tx.input, tx.dtype, ("batch", length), "text.input")
            add("text_attention", tx.attention_input, tx.dtype, ("batch", length), "text.attention_input")
            add("text_token_types", tx.token_type_input, tx.dtype, ("batch", length), "text.token_type_input")
            add("text_mask", tx.mask_input, "bool", ("batch",), "text.mask_input")
        return found

    def graph_input_names(self) -> list[str]:
        return [g.name for g in self.graph_inputs()]


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
    for output in data.get("outputs", []):  # attribution fields only where they mean something
        for key in ("attribution", "modalities"):
            if output.get(key) is None:
                output.pop(key, None)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def model_config_json_schema() -> dict[str, Any]:
    return ModelConfig.model_json_schema()
