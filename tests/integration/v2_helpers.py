"""Shared bits of the V2 / gRPC integration tests: model names and request builders."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

CLASSIFIER = "digits-fusion"
EMBEDDER = "digits-embed"


def object_column(values: list[bytes]) -> np.ndarray:
    """A BYTES column ``[B]`` as the clients expect it: an object array of bytes."""
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def decoded_image(encoded: bytes) -> np.ndarray:
    """What the server's decoder makes of an upload, for the already-decoded tensor path."""
    with Image.open(io.BytesIO(encoded)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def decoded_audio(encoded: bytes) -> np.ndarray:
    wave, _rate = sf.read(io.BytesIO(encoded), dtype="float32", always_2d=True)
    return np.ascontiguousarray(wave.mean(axis=1), dtype=np.float32)


def top(labels: np.ndarray, scores: np.ndarray) -> list[list[tuple[str, float]]]:
    """Rows of (label, score), labels decoded: the answer the four doors must agree on."""
    rows: list[list[tuple[str, float]]] = []
    for label_row, score_row in zip(labels.tolist(), scores.tolist(), strict=True):
        rows.append([(_text(lab), float(s)) for lab, s in zip(label_row, score_row, strict=True)])
    return rows


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def check_classes(classes: np.ndarray, probabilities: np.ndarray, count: int) -> None:
    """Triton's classification output against the same rows' probabilities.

    Each element is ``"<value>:<index>:<label>"``, best first; this model's
    label of class ``i`` is ``str(i)``.
    """
    assert classes.shape == (probabilities.shape[0], count)
    for row, probs in zip(classes, probabilities, strict=True):
        entries = [_text(e).split(":") for e in row]
        indices = [int(index) for _value, index, _label in entries]
        assert indices == [int(i) for i in np.argsort(-probs, kind="stable")[:count]]
        for value, index, label in entries:
            assert len(value.split(".")[1]) == 6  # printed as std::to_string prints a float
            assert float(value) == pytest.approx(float(probs[int(index)]), abs=1e-6)
            assert label == index
