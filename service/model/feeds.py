"""Stack decoded rows into the graph's feeds, and split its outputs back.

Rows with different subsets of modalities share one batch: an absent modality
gets zeros and ``<modality>_mask = False`` (docs/contracts.md §1). Text and
audio are padded with zeros to the longest row of the batch — never to the
configured maximum — so short requests batched together stay cheap; the
graph ignores the padding through ``audio_length`` and ``text_attention``.
"""

from __future__ import annotations

import numpy as np

from service.errors import InternalError
from service.model.config import ModelConfig
from service.model.rows import DecodedRow, RowOutputs

Feeds = dict[str, np.ndarray]


def collate(rows: list[DecodedRow], config: ModelConfig) -> tuple[Feeds, dict[str, float]]:
    """Feeds for exactly ``config.graph_input_names()`` and the padding ratio per modality.

    The padding ratio is padded elements / all elements over the rows that
    carry the modality; a modality no row carries reports no ratio.
    """
    if not rows:
        raise InternalError("cannot collate an empty batch")
    feeds: Feeds = {}
    padding: dict[str, float] = {}
    spec = config.modalities
    if spec.image is not None:
        feeds.update(_images(rows, spec.image.height, spec.image.width))
    if spec.audio is not None:
        audio, ratio = _audio(rows, spec.audio.min_samples)
        feeds.update(audio)
        if ratio is not None:
            padding["audio"] = ratio
    if spec.text is not None:
        text, ratio = _text(rows)
        feeds.update(text)
        if ratio is not None:
            padding["text"] = ratio
    return {name: feeds[name] for name in config.graph_input_names()}, padding


def _images(rows: list[DecodedRow], height: int, width: int) -> Feeds:
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
    return {"image": batch, "image_mask": mask}


def _ratio(lengths: list[int], padded_to: int) -> float | None:
    """Padded share of the rows that carry the modality (``None`` when none does)."""
    present = [n for n in lengths if n > 0]
    if not present:
        return None
    total = len(present) * padded_to
    return (total - sum(present)) / total


def _audio(rows: list[DecodedRow], min_samples: int) -> tuple[Feeds, float | None]:
    for i, row in enumerate(rows):
        if row.audio is not None and row.audio.ndim != 1:
            raise InternalError(f"row {i}: decoded audio has shape {row.audio.shape}, expected [T]")
    lengths = [0 if r.audio is None else len(r.audio) for r in rows]
    width = max(max(lengths), min_samples)
    batch = np.zeros((len(rows), width), dtype=np.float32)
    for i, row in enumerate(rows):
        if row.audio is not None:
            batch[i, : lengths[i]] = row.audio
    feeds: Feeds = {
        "audio": batch,
        "audio_length": np.asarray(lengths, dtype=np.int64),
        "audio_mask": np.asarray([r.audio is not None for r in rows], dtype=np.bool_),
    }
    return feeds, _ratio(lengths, width)


def _text(rows: list[DecodedRow]) -> tuple[Feeds, float | None]:
    for i, row in enumerate(rows):
        if row.text_ids is not None and row.text_ids.ndim != 1:
            raise InternalError(f"row {i}: token ids have shape {row.text_ids.shape}, expected [L]")
    lengths = [0 if r.text_ids is None else len(r.text_ids) for r in rows]
    width = max(max(lengths), 1)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    attention = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        if row.text_ids is not None:
            ids[i, : lengths[i]] = row.text_ids
            attention[i, : lengths[i]] = 1
    feeds: Feeds = {
        "text_ids": ids,
        "text_attention": attention,
        "text_mask": np.asarray([r.text_ids is not None for r in rows], dtype=np.bool_),
    }
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
