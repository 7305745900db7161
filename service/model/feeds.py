"""Stack decoded rows into the graph's feeds, and split its outputs back.

Rows with different subsets of modalities share one batch: an absent modality
gets zeros and ``<modality>_mask = False`` (docs/contracts.md §1). Text and
audio are padded with zeros to the longest row of the batch — never to the
configured maximum — so short requests batched together stay cheap; the
graph ignores the padding through ``audio_length`` and ``text_attention``.
A config may say otherwise (docs/model-config.md, "Mapping"): fixed windows,
another pad id, float images normalised per channel, NCHW. Those changes are
made here, once per batch and vectorised, never per pixel in Python.
"""

from __future__ import annotations

import numpy as np

from fusionserve.service.errors import InternalError
from fusionserve.service.model.config import AudioSpec, ImageSpec, ModelConfig, TextSpec
from fusionserve.service.model.rows import DecodedRow, RowOutputs

Feeds = dict[str, np.ndarray]


def collate(rows: list[DecodedRow], config: ModelConfig) -> tuple[Feeds, dict[str, float]]:
    """Feeds for exactly ``config.graph_input_names()`` and the padding ratio per modality.

    The padding ratio is padded elements / all elements over the rows that
    carry the modality; a modality no row carries reports no ratio.
    """
    if not rows:
        raise InternalError("cannot collate an empty batch")
    by_role: Feeds = {}
    padding: dict[str, float] = {}
    spec = config.modalities
    if spec.image is not None:
        by_role.update(_images(rows, spec.image))
    if spec.audio is not None:
        audio, ratio = _audio(rows, spec.audio)
        by_role.update(audio)
        if ratio is not None:
            padding["audio"] = ratio
    if spec.text is not None:
        text, ratio = _text(rows, spec.text)
        by_role.update(text)
        if ratio is not None:
            padding["text"] = ratio
    return {g.name: by_role[g.role] for g in config.graph_inputs()}, padding


def _images(rows: list[DecodedRow], spec: ImageSpec) -> Feeds:
    height, width = spec.height, spec.width
    batch = np.zeros((len(rows), height, width, 3), dtype=np.uint8)
    mask = np.zeros(len(rows), dtype=np.bool_)
    for i, row in enumerate(rows):
        if row.image is None:
            continue
        if row.image.shape != (height, width, 3):
            raise InternalError(
                f"row {i}: decoded image has shape {row.image.shape}, expected {(height, width, 3)}"
            )
        batch[i] = row.image
        mask[i] = True
    return {"image": image_tensor(batch, mask, spec), "image_mask": mask}


def image_tensor(batch: np.ndarray, present: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """uint8 RGB ``[B,H,W,3]`` → the graph's image tensor, on the whole batch at once.

    ``(pixel * scale - mean) / std`` per channel, folded into one multiply and
    one add (``pixel * scale/std - mean/std``, within a float32 rounding of the
    three-step form), in the graph's channel order, dtype and layout; absent
    rows stay all zeros. The layout change is made on the uint8 batch, before
    the float copy, where it moves a quarter of the bytes. The bundled
    contract (uint8 RGB NHWC) returns ``batch`` itself.
    """
    if spec.channel_order == "BGR":
        batch = batch[..., ::-1]
    if spec.layout == "NCHW":
        batch = batch.transpose(0, 3, 1, 2)
    batch = np.ascontiguousarray(batch)
    if not spec.normalises:
        return batch
    gain, offset = _affine(spec)
    shape = (1, 3, 1, 1) if spec.layout == "NCHW" else (1, 1, 1, 3)
    out = batch.astype(np.float32)
    out *= gain.reshape(shape)
    out += offset.reshape(shape)
    if not present.all():
        out[~present] = 0
    return out if spec.dtype == "float32" else out.astype(spec.dtype)


def _affine(spec: ImageSpec) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``scale / std`` and ``-mean / std`` (float32)."""
    std = np.asarray(spec.std if spec.std is not None else (1.0, 1.0, 1.0), dtype=np.float64)
    mean = np.asarray(spec.mean if spec.mean is not None else (0.0, 0.0, 0.0), dtype=np.float64)
    return (spec.scale / std).astype(np.float32), (-mean / std).astype(np.float32)


def _ratio(lengths: list[int], padded_to: int) -> float | None:
    """Padded share of the rows that carry the modality (``None`` when none does)."""
    present = [n for n in lengths if n > 0]
    if not present:
        return None
    total = len(present) * padded_to
    return (total - sum(present)) / total


def _audio(rows: list[DecodedRow], spec: AudioSpec) -> tuple[Feeds, float | None]:
    for i, row in enumerate(rows):
        if row.audio is not None and row.audio.ndim != 1:
            raise InternalError(f"row {i}: decoded audio has shape {row.audio.shape}, expected [T]")
    lengths = [0 if r.audio is None else min(len(r.audio), spec.max_samples) for r in rows]
    width = spec.max_samples if spec.window == "fixed" else max(max(lengths), spec.min_samples)
    batch = np.zeros((len(rows), width), dtype=np.float32)
    for i, row in enumerate(rows):
        if row.audio is not None:
            batch[i, : lengths[i]] = row.audio[: lengths[i]]
    feeds: Feeds = {
        "audio": batch if spec.dtype == "float32" else batch.astype(spec.dtype),
        "audio_length": np.asarray(lengths, dtype=np.int64),
        "audio_mask": np.asarray([r.audio is not None for r in rows], dtype=np.bool_),
    }
    return feeds, _ratio(lengths, width)


def _text(rows: list[DecodedRow], spec: TextSpec) -> tuple[Feeds, float | None]:
    for i, row in enumerate(rows):
        if row.text_ids is not None and row.text_ids.ndim != 1:
            raise InternalError(f"row {i}: token ids have shape {row.text_ids.shape}, expected [L]")
    lengths = [0 if r.text_ids is None else len(r.text_ids) for r in rows]
    width = spec.max_tokens if spec.padding == "fixed" else max(max(lengths), 1)
    if max(lengths) > width:
        raise InternalError(f"a row holds {max(lengths)} tokens, over the fixed length {width}")
    dtype = np.dtype(spec.dtype)
    pad = spec.pad_id or 0
    ids = np.full((len(rows), width), pad, dtype=dtype) if pad else np.zeros((len(rows), width), dtype=dtype)
    attention = np.zeros((len(rows), width), dtype=dtype)
    for i, row in enumerate(rows):
        if row.text_ids is not None:
            ids[i, : lengths[i]] = row.text_ids
            attention[i, : lengths[i]] = 1
    feeds: Feeds = {
        "text_ids": ids,
        "text_attention": attention,
        "text_mask": np.asarray([r.text_ids is not None for r in rows], dtype=np.bool_),
    }
    if spec.token_type_input is not None:
        feeds["text_token_types"] = np.zeros((len(rows), width), dtype=dtype)
    return feeds, _ratio(lengths, width)


def split_outputs(outputs: dict[str, np.ndarray], n: int) -> list[RowOutputs]:
    """Per-row views of a batch's outputs, after checking every output has ``n`` rows.

    A model that returns the wrong number of rows would otherwise hand one
    caller another caller's answer; that is a fault of ours, never theirs.
    """
    for name, array in outputs.items():
        rows = array.shape[0] if array.ndim > 0 else 0
        if rows != n:
            raise InternalError(f"model returned {rows} rows for a batch of {n} (output {name!r})")
    return [{name: array[i] for name, array in outputs.items()} for i in range(n)]
