"""``fusionserve inspect``: describe a graph's inputs and outputs and guess a starter config.yaml.

The guess works from the tensor names (``pixel_values``, ``input_ids``,
``attention_mask``, ``token_type_ids``, ``input_values``, ``*_mask``,
``logits``, ``*embedding*``), dtypes and static shapes, and from a
``tokenizer.json``/``labels.txt`` beside the entry. Every value the graph
does not state is marked ``# guess`` in the written file; for a conventionally
named export the starter config serves as written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fusionserve.service.model.config import LABELS_FILE, TOKENIZER_FILE

#: torchvision's ImageNet normalisation: the usual training transform of a float image input.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

_IMAGE_NAMES = ("pixel_values", "image", "images", "pixels", "input_image", "img")
_AUDIO_NAMES = ("input_values", "audio", "waveform", "wav", "speech", "input_audio")
_IDS_NAMES = ("input_ids", "text_ids", "token_ids", "ids", "tokens")


@dataclass(frozen=True)
class GraphTensor:
    """One graph input or output: dtype (numpy name, or None) and per-axis size (int, symbol or None)."""

    name: str
    dtype: str | None
    shape: list[int | str | None] | None

    def describe(self) -> str:
        dims = (
            "?"
            if self.shape is None
            else "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"
        )
        dynamic = (
            [] if self.shape is None else [i for i, d in enumerate(self.shape) if not isinstance(d, int)]
        )
        extra = f"  dynamic axes {dynamic}" if dynamic else ""
        return f"{self.name}: {self.dtype or '?'} {dims}{extra}"


def read_graph(model_file: Path) -> tuple[str, list[GraphTensor], list[GraphTensor]]:
    """``(backend, inputs, outputs)`` of an ONNX file or a TorchScript module."""
    if model_file.suffix == ".onnx":
        import onnx

        model = onnx.load(str(model_file), load_external_data=False)
        initializers = {t.name for t in model.graph.initializer}
        inputs = [_onnx_tensor(v) for v in model.graph.input if v.name not in initializers]
        return "onnx", inputs, [_onnx_tensor(v) for v in model.graph.output]
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(model_file), map_location="cpu")
    arguments = module.forward.schema.arguments[1:]
    return "torchscript", [GraphTensor(a.name, None, None) for a in arguments], []


def _onnx_tensor(value: Any) -> GraphTensor:
    import onnx

    tensor = value.type.tensor_type
    try:
        dtype: str | None = str(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    except (KeyError, ValueError):
        dtype = None
    if not tensor.HasField("shape"):
        return GraphTensor(value.name, dtype, None)
    dims: list[int | str | None] = []
    for d in tensor.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or None)
    return GraphTensor(value.name, dtype, dims)


def _fixed(shape: list[int | str | None] | None, axis: int) -> int | None:
    if shape is None or len(shape) <= axis:
        return None
    size = shape[axis]
    return size if isinstance(size, int) else None


def _has(name: str, *words: str) -> bool:
    lowered = name.lower()
    return any(w in lowered for w in words)


class Guess:
    """A starter config and, per dotted field, why its value is a guess."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.guesses: dict[str, str] = {}

    def put(self, dotted: str, value: Any, guess: str | None = None) -> None:
        target = self.data
        *path, last = dotted.split(".")
        for key in path:
            target = target.setdefault(key, {})
        target[last] = value
        if guess:
            self.guesses[dotted] = guess


def starter_config(model_file: Path, entry_dir: Path | None = None) -> tuple[str, list[str]]:
    """The starter ``config.yaml`` text and the list of what could not be mapped."""
    backend, inputs, outputs = read_graph(model_file)
    entry_dir = entry_dir or (
        model_file.parent.parent if model_file.parent.name.isdigit() else model_file.parent
    )
    guess = Guess()
    leftovers: list[str] = []
    name = (
        entry_dir.name if (entry_dir / "1").is_dir() or model_file.parent.name.isdigit() else model_file.stem
    )
    guess.put("name", name)
    guess.put("backend", backend)
    labels = _labels(entry_dir / LABELS_FILE)
    tokenizer = entry_dir / TOKENIZER_FILE
    by_role = _assign_roles(inputs, leftovers)
    _image(guess, by_role)
    _audio(guess, by_role)
    _text(guess, by_role, tokenizer)
    task = _outputs(guess, outputs, labels, backend)
    guess.data = {"name": guess.data["name"], "task": task, **guess.data}
    guess.put("labels_file", LABELS_FILE if task == "classify" else None)
    guess.put("tokenizer_file", TOKENIZER_FILE if "text" in guess.data.get("modalities", {}) else None)
    return _render(guess), leftovers


def _labels(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _assign_roles(inputs: list[GraphTensor], leftovers: list[str]) -> dict[str, GraphTensor]:
    roles: dict[str, GraphTensor] = {}
    for t in inputs:
        lowered = t.name.lower()
        rank = None if t.shape is None else len(t.shape)
        is_float = t.dtype in ("float32", "float16")
        if _has(lowered, "mask") and not _has(lowered, "attention"):
            for modality in ("image", "audio", "text"):
                if _has(lowered, modality, "pixel" if modality == "image" else modality):
                    roles.setdefault(f"{modality}_mask", t)
                    break
            else:
                leftovers.append(f"{t.name}: a mask of no modality named in it; map it by hand")
            continue
        if lowered in _IMAGE_NAMES or (rank == 4 and "image" not in roles):
            roles.setdefault("image", t)
        elif _has(lowered, "attention"):
            roles.setdefault("text_attention", t)
        elif _has(lowered, "token_type", "segment"):
            roles.setdefault("text_token_types", t)
        elif _has(lowered, "length", "lens"):
            roles.setdefault("audio_length", t)
        elif lowered in _IDS_NAMES or (
            rank == 2 and not is_float and t.dtype is not None and "text_ids" not in roles
        ):
            roles.setdefault("text_ids", t)
        elif lowered in _AUDIO_NAMES or (rank == 2 and is_float and "audio" not in roles):
            roles.setdefault("audio", t)
        else:
            leftovers.append(f"{t.name}: no role recognised from its name, dtype and shape; map it by hand")
    return roles


def _image(guess: Guess, roles: dict[str, GraphTensor]) -> None:
    image = roles.get("image")
    if image is None:
        return
    shape = image.shape
    layout = "NCHW" if _fixed(shape, 1) == 3 else "NHWC"
    if shape is None:
        layout = "NCHW"
    h_axis, w_axis = (2, 3) if layout == "NCHW" else (1, 2)
    prefix = "modalities.image"
    height, width = _fixed(shape, h_axis), _fixed(shape, w_axis)
    guess.put(f"{prefix}.height", height or 224, None if height else "the graph does not fix the height")
    guess.put(f"{prefix}.width", width or 224, None if width else "the graph does not fix the width")
    guess.put(f"{prefix}.resize", "stretch", "say how training resized: stretch, center_crop, shortest_side")
    guess.put(f"{prefix}.input", image.name)
    mask = roles.get("image_mask")
    guess.put(f"{prefix}.mask_input", mask.name if mask else None)
    dtype = image.dtype or "float32"
    guess.put(f"{prefix}.dtype", dtype, None if image.dtype else "TorchScript states no dtype")
    guess.put(f"{prefix}.layout", layout, None if shape is not None else "TorchScript states no layout")
    if dtype != "uint8":
        guess.put(f"{prefix}.scale", 1 / 255, "pixels / 255, as torchvision's ToTensor")
        guess.put(f"{prefix}.mean", IMAGENET_MEAN, "ImageNet mean: check your training transforms")
        guess.put(f"{prefix}.std", IMAGENET_STD, "ImageNet std: check your training transforms")


def _audio(guess: Guess, roles: dict[str, GraphTensor]) -> None:
    audio = roles.get("audio")
    if audio is None:
        return
    prefix = "modalities.audio"
    window = _fixed(audio.shape, 1)
    guess.put(f"{prefix}.sample_rate", 16000, "the graph cannot say its sample rate")
    guess.put(f"{prefix}.max_samples", window or 160000, None if window else "longest audio the model takes")
    unknown = audio.shape is None
    guess.put(
        f"{prefix}.window",
        "fixed" if window else "dynamic",
        "TorchScript states no length" if unknown else None,
    )
    guess.put(f"{prefix}.input", audio.name)
    length, mask = roles.get("audio_length"), roles.get("audio_mask")
    guess.put(f"{prefix}.length_input", length.name if length else None)
    guess.put(f"{prefix}.mask_input", mask.name if mask else None)
    if audio.dtype == "float16":
        guess.put(f"{prefix}.dtype", "float16")


def _text(guess: Guess, roles: dict[str, GraphTensor], tokenizer: Path) -> None:
    ids = roles.get("text_ids")
    if ids is None:
        return
    prefix = "modalities.text"
    length = _fixed(ids.shape, 1)
    guess.put(f"{prefix}.max_tokens", length or 128, None if length else "longest token sequence to keep")
    guess.put(f"{prefix}.input", ids.name)
    for role, field in (
        ("text_attention", "attention_input"),
        ("text_token_types", "token_type_input"),
        ("text_mask", "mask_input"),
    ):
        found = roles.get(role)
        guess.put(f"{prefix}.{field}", found.name if found else None)
    special = _has_post_processor(tokenizer)
    guess.put(
        f"{prefix}.special_tokens",
        bool(special),
        "from tokenizer.json's post-processor"
        if special is not None
        else "no tokenizer.json beside the entry",
    )
    unknown = ids.shape is None  # TorchScript: no shapes at all
    guess.put(
        f"{prefix}.padding",
        "fixed" if length else "longest",
        "TorchScript states no length: fixed if the model has positions for exactly N tokens"
        if unknown
        else None,
    )
    if ids.dtype == "int32":
        guess.put(f"{prefix}.dtype", "int32")


def _has_post_processor(path: Path) -> bool | None:
    if not path.is_file():
        return None
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8")).get("post_processor") is not None
    except (ValueError, OSError):
        return None


def _outputs(guess: Guess, outputs: list[GraphTensor], labels: list[str] | None, backend: str) -> str:
    specs: list[dict[str, Any]] = []
    for t in outputs:
        dims = _fixed(t.shape, 1)
        if _has(t.name, "embed", "feature", "pooled"):
            source = next((m for m in ("image", "audio", "text") if _has(t.name, m)), "fused")
            specs.append({"name": t.name, "kind": "embedding", "source": source, "dims": dims or 1})
        elif t.shape is None or len(t.shape) == 2:
            kind = {"name": t.name, "kind": "logits", "dims": dims or (len(labels) if labels else 1)}
            if _has(t.name, "prob", "softmax"):
                kind["softmax_applied"] = True
            specs.append(kind)
    if not specs:
        name = "logits"
        specs.append({"name": name, "kind": "logits", "dims": len(labels) if labels else 1})
        guess.guesses["outputs"] = (
            "TorchScript states no outputs: name each (a dict key) or list them in tuple order"
            if backend == "torchscript"
            else "no [batch, N] output found"
        )
    kinds = [s["kind"] for s in specs]
    guess.put("outputs", specs)
    if labels is None and "logits" in kinds:
        guess.guesses["labels_file"] = "labels.txt not found beside the entry: one label per logit column"
    return "classify" if "logits" in kinds else "embed"


class _Dumper(yaml.SafeDumper):
    """Block style for mappings (one field a line, so each can carry its comment), flow for number lists."""


def _represent_list(dumper: yaml.SafeDumper, values: list[Any]) -> Any:
    flow = all(not isinstance(v, (dict, list)) for v in values)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", values, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def _render(guess: Guess) -> str:
    """YAML with a ``# guess: why`` comment after every guessed field."""
    lines = yaml.dump(guess.data, Dumper=_Dumper, sort_keys=False, width=100).splitlines()
    out: list[str] = ["# Starter config written by `fusionserve inspect`: check every line marked guess."]
    stack: list[tuple[int, str]] = []
    for line in lines:
        stripped = line.lstrip(" -")
        indent = len(line) - len(stripped)
        key = stripped.split(":", 1)[0] if ":" in stripped else ""
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [key]) if key else ""
        if key and stripped.rstrip().endswith(":"):
            stack.append((indent, key))
        reason = guess.guesses.get(dotted)
        out.append(f"{line}  # guess: {reason}" if reason else line)
    return "\n".join(out) + "\n"


def describe(model_file: Path) -> str:
    """The graph's inputs and outputs, one per line."""
    backend, inputs, outputs = read_graph(model_file)
    lines = [f"{model_file} ({backend})", "inputs:"]
    lines += [f"  {t.describe()}" for t in inputs]
    lines.append("outputs:")
    lines += [f"  {t.describe()}" for t in outputs] or ["  (TorchScript does not state its outputs)"]
    return "\n".join(lines)
