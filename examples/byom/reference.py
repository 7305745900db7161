"""The example's own preprocessing, for ``fusionserve verify ENTRY --reference examples/byom/reference.py``.

``preprocess(files)`` gets the same files the server decodes (``image``/``audio``
bytes, ``text`` string) and returns one row per graph input, as training fed it.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fusion_model as fm


def preprocess(files: dict[str, bytes | str]) -> dict[str, np.ndarray]:
    row: dict[str, np.ndarray] = {}
    if "image" in files:
        row["pixel_values"] = fm.reference_pixels(bytes(files["image"]))  # type: ignore[arg-type]
    if "audio" in files:
        samples, _ = sf.read(io.BytesIO(bytes(files["audio"])), dtype="float32")  # type: ignore[arg-type]
        row["input_values"] = fm.reference_audio(samples)
    if "text" in files:
        row.update(fm.reference_text(fm.build_tokenizer(), str(files["text"])))
    return row
