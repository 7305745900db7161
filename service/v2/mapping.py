"""What fusionserve's V2 tensors mean: modalities in, predictions and embeddings out.

Inputs are named after the modality. ``image`` and ``audio`` are ``BYTES``
(one encoded file per row, shape ``[B]`` or ``[B,1]``) or already decoded
(``image`` UINT8 ``[B,H,W,3]``, ``audio`` FP32 ``[B,T]``); ``text`` is
``BYTES`` UTF-8. A modality left out is masked; an empty ``BYTES`` element
masks it for that row only, so one request may mix subsets.

Outputs of a classifier: ``probabilities`` FP32 ``[B,C]`` (label order),
``labels`` BYTES ``[B,k]`` and ``scores`` FP32 ``[B,k]`` (top-k, best first;
request parameter ``top_k``, default 1); and, only when the request names
them, the embedding and attribution outputs its config declares
(``fused_embedding``, ``<modality>_embedding``, ``modality_attribution``),
computed in the same run. Of an embedding model: each
embedding output of its config (``fused_embedding`` FP32 ``[B,D]``, and
``<modality>_embedding`` for the modalities the request carries; rows without
that modality get zeros).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fusionserve.service.errors import InvalidInput, NotReady, brief
from fusionserve.service.model.config import ModelConfig, OutputKind
from fusionserve.service.model.rows import RawInputs
from fusionserve.service.v2.codec import RequestedOutput, Tensor

DEFAULT_TOP_K = 1
PROBABILITIES, LABELS, SCORES = "probabilities", "labels", "scores"
#: Datatypes each input accepts: BYTES (encoded / UTF-8) or the decoded form.
DECODED_DATATYPE = {"image": "UINT8", "audio": "FP32"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]


def require_config(model: str, config: ModelConfig | None, error: str | None) -> ModelConfig:
    if config is None:
        raise NotReady(f"model {model!r} is not loaded: {error or 'no valid config'}")
    return config


def input_specs(config: ModelConfig) -> list[TensorSpec]:
    return [TensorSpec(m.value, "BYTES", (-1,)) for m in config.modalities.present()]


def output_specs(config: ModelConfig, labels: list[str] | None) -> list[TensorSpec]:
    """Every output a request may name. A classifier's embedding and attribution
    outputs are answered only when named (the three classification outputs are
    the default answer)."""
    extra = [
        TensorSpec(o.name, "FP32", (-1, o.dims))
        for o in config.outputs
        if o.kind in (OutputKind.embedding, OutputKind.attribution)
    ]
    if config.task == "classify":
        classes = len(labels) if labels else -1
        return [
            TensorSpec(PROBABILITIES, "FP32", (-1, classes)),
            TensorSpec(LABELS, "BYTES", (-1, -1)),
            TensorSpec(SCORES, "FP32", (-1, -1)),
            *extra,
        ]
    return [s for s in extra if s.name in {o.name for o in config.outputs if o.kind == OutputKind.embedding}]


def includes_for(config: ModelConfig, wanted: list[str]) -> list[str]:
    """The ``include`` values of predict that the named outputs need."""
    kinds = {o.name: o.kind for o in config.outputs}
    include = []
    if any(kinds.get(n) == OutputKind.embedding for n in wanted):
        include.append("embeddings")
    if any(kinds.get(n) == OutputKind.attribution for n in wanted):
        include.append("attribution")
    return include


def extra_prediction_outputs(config: ModelConfig, predictions: list[Any], wanted: list[str]) -> list[Tensor]:
    """A classifier's named embedding and attribution outputs, as the graph gave them.

    Rows without a modality get zeros in that modality's embedding, as for an
    embedding model; attribution rows are the graph's row (0 where absent).
    """
    tensors = []
    for spec in config.outputs:
        if spec.name not in wanted:
            continue
        if spec.kind == OutputKind.embedding:
            zeros = np.zeros(spec.dims, dtype=np.float32)
            rows = [
                p.embedding if spec.source == "fused" else (p.embeddings or {}).get(spec.source, zeros)
                for p in predictions
            ]
        elif spec.kind == OutputKind.attribution:
            columns = list(spec.modalities or [])
            width = spec.dims // max(1, len(columns))
            rows = []
            for p in predictions:
                values = p.attribution.values if p.attribution else {}
                zeros = np.zeros(width, dtype=np.float32)
                rows.append(np.concatenate([values.get(m, zeros) for m in columns]))
        else:
            continue
        data = np.stack(rows).astype(np.float32)
        tensors.append(Tensor(spec.name, "FP32", tuple(data.shape), data))
    return tensors


#: V2 datatypes as Triton's model configuration names them.
TRITON_DATA_TYPES = {"BYTES": "TYPE_STRING", "FP32": "TYPE_FP32", "UINT8": "TYPE_UINT8"}
TRITON_BACKENDS = {"onnx": "onnxruntime", "torchscript": "pytorch"}


def triton_model_config(
    name: str, platform: str, config: ModelConfig, labels: list[str] | None, max_batch_items: int
) -> dict[str, object]:
    """Triton's model configuration of a model, as JSON (REST) and for the gRPC message.

    ``max_batch_size`` is the most rows one request may carry, so dims leave
    the batch dimension out (Triton's convention): each modality is one
    ``TYPE_STRING`` element per row (the encoded file or text), optional
    because a modality left out is masked.
    """
    batching = config.batching
    return {
        "name": name,
        "platform": platform,
        "backend": TRITON_BACKENDS[config.backend],
        "max_batch_size": max_batch_items,
        "input": [
            {"name": s.name, "data_type": TRITON_DATA_TYPES[s.datatype], "dims": [1], "optional": True}
            for s in input_specs(config)
        ],
        "output": [
            {"name": s.name, "data_type": TRITON_DATA_TYPES[s.datatype], "dims": list(s.shape[1:])}
            for s in output_specs(config, labels)
        ],
        "dynamic_batching": {
            "preferred_batch_size": list(batching.preferred_batch_sizes),
            "max_queue_delay_microseconds": int(batching.max_queue_delay_ms * 1000),
        },
    }


# -- inputs -> rows -----------------------------------------------------------


def is_bytes_column_shape(shape: Sequence[int]) -> bool:
    """``BYTES`` inputs are one element per row: shape ``[B]`` or ``[B,1]``."""
    return len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)


def bytes_column(name: str, elements: list[bytes]) -> list[bytes | str | None]:
    """One modality's values from its ``BYTES`` elements: text decoded from UTF-8; an
    empty element leaves the modality out of that row (None)."""
    if name != "text":
        return [e or None for e in elements]
    try:
        return [e.decode("utf-8") or None for e in elements]
    except UnicodeDecodeError as exc:
        raise InvalidInput("input 'text': BYTES elements must be UTF-8 text") from exc


def rows_of_columns(columns: Mapping[str, Sequence[object]], count: int) -> list[RawInputs]:
    """Rows from per-modality columns of ``count`` values; a missing column is masked."""
    absent: list[None] = [None] * count
    image, audio, text = (columns.get(m, absent) for m in ("image", "audio", "text"))
    return [RawInputs(image=i, audio=a, text=t) for i, a, t in zip(image, audio, text, strict=True)]  # type: ignore[arg-type]


def _bytes_elements(tensor: Tensor) -> list[bytes]:
    shape = tensor.shape
    if not is_bytes_column_shape(shape):
        raise InvalidInput(f"input {tensor.name!r}: BYTES shape must be [B] or [B,1], got {list(shape)}")
    elements: list[bytes] = tensor.data.reshape(-1).tolist()  # already bytes: no copy
    if str(tensor.parameters.get("content_type", "")).lower() == "base64":
        try:
            return [base64.b64decode(v, validate=True) for v in elements]
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput(f"input {tensor.name!r}: content_type base64 but not valid base64") from exc
    return elements


def _decoded_rows(tensor: Tensor) -> list[np.ndarray]:
    if tensor.name == "image" and (len(tensor.shape) != 4 or tensor.shape[3] != 3):
        raise InvalidInput(f"input 'image': UINT8 shape must be [B,H,W,3], got {list(tensor.shape)}")
    if tensor.name == "audio" and len(tensor.shape) != 2:
        raise InvalidInput(f"input 'audio': FP32 shape must be [B,T], got {list(tensor.shape)}")
    return list(tensor.data)


def _column(tensor: Tensor) -> Sequence[bytes | np.ndarray | str | None]:
    """One input's value per row; None where the row leaves the modality out."""
    decoded = DECODED_DATATYPE.get(tensor.name)
    if tensor.datatype == decoded:
        return _decoded_rows(tensor)
    if tensor.datatype != "BYTES":
        accepted = "BYTES" + (f" or {decoded}" if decoded else "")
        raise InvalidInput(
            f"input {tensor.name!r}: datatype {tensor.datatype} is not accepted; expected {accepted}"
        )
    return bytes_column(tensor.name, _bytes_elements(tensor))


def rows_from_inputs(model: str, config: ModelConfig, inputs: list[Tensor]) -> list[RawInputs]:
    """One ``RawInputs`` per row; checks names, datatypes, shapes and the batch size."""
    accepted = [m.value for m in config.modalities.present()]
    names = [t.name for t in inputs]
    unknown = sorted(set(names) - set(accepted))
    if unknown:
        raise InvalidInput(f"unknown input(s) {unknown}: model {model!r} takes inputs {accepted}")
    if len(set(names)) != len(names):
        raise InvalidInput(f"an input is given twice: {names}")
    if not inputs:
        raise InvalidInput(f"no inputs: model {model!r} takes any of {accepted}")
    columns = {t.name: _column(t) for t in inputs}
    sizes = {name: len(values) for name, values in columns.items()}
    count = len(columns[names[0]])
    if any(size != count for size in sizes.values()):
        raise InvalidInput(f"inputs disagree on the batch size (first dimension): {sizes}")
    return rows_of_columns(columns, count)


def top_k_of(parameters: dict[str, object]) -> int:
    value = parameters.get("top_k", DEFAULT_TOP_K)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(
            f"parameter top_k must be an integer, got {brief(value)}", field="parameters.top_k"
        )
    return value


def check_requested(
    config: ModelConfig, labels: list[str] | None, requested: list[RequestedOutput]
) -> list[str]:
    """The requested output names (empty: all), each one the model yields."""
    if not requested:
        return []
    known = [s.name for s in output_specs(config, labels)]
    names = [r.name for r in requested]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise InvalidInput(f"unknown output(s) {unknown}; the model yields {known}")
    return names


# -- answers -> outputs ---------------------------------------------------------


def _labels_tensor(labels: list[list[str]]) -> np.ndarray:
    width = max((len(row) for row in labels), default=0)
    array = np.empty((len(labels), width), dtype=object)
    for i, row in enumerate(labels):
        array[i, :] = [label.encode("utf-8") for label in row]
    return array


def prediction_outputs(
    labels: list[list[str]], scores: list[list[float]], probabilities: list[np.ndarray], wanted: list[str]
) -> list[Tensor]:
    """Classifier outputs in the order asked for (all three when nothing is asked)."""
    batch = len(labels)
    built = {
        PROBABILITIES: lambda: np.array(probabilities, dtype=np.float32).reshape(batch, -1),
        LABELS: lambda: _labels_tensor(labels),
        SCORES: lambda: np.asarray(scores, dtype=np.float32).reshape(batch, -1),
    }
    datatypes = {PROBABILITIES: "FP32", LABELS: "BYTES", SCORES: "FP32"}
    tensors = []
    for name in wanted or [PROBABILITIES, LABELS, SCORES]:
        data = built[name]()
        tensors.append(Tensor(name, datatypes[name], tuple(data.shape), data))
    return tensors


def embedding_outputs(
    config: ModelConfig,
    fused: list[np.ndarray],
    per_modality: list[dict[str, np.ndarray]],
    wanted: list[str],
) -> list[Tensor]:
    """Embedding outputs; a modality's output only when some row carries it, unless asked for."""
    specs = [o for o in config.outputs if o.kind == OutputKind.embedding]
    carried = {m for row in per_modality for m in row}
    tensors = []
    for spec in specs:
        if wanted and spec.name not in wanted:
            continue
        if spec.source == "fused":
            data = np.stack(fused).astype(np.float32)
        elif spec.source in carried or spec.name in wanted:
            zeros = np.zeros(spec.dims, dtype=np.float32)
            data = np.stack([row.get(spec.source, zeros) for row in per_modality]).astype(np.float32)
        else:
            continue
        tensors.append(Tensor(spec.name, "FP32", tuple(data.shape), data))
    if wanted:
        order = {name: i for i, name in enumerate(wanted)}
        tensors.sort(key=lambda t: order[t.name])
    return tensors
