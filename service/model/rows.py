"""Plain data that flows through the core, independent of any protocol."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class RawInputs:
    """One request row as a door received it.

    ``image``/``audio`` are either encoded file bytes (JPEG/PNG/WebP,
    WAV/FLAC/OGG) decoded by the server, or already-decoded arrays (uint8
    ``[H,W,3]`` image; float32 ``[T]`` waveform at the model's sample rate).
    ``None`` means the modality is absent (it will be masked).
    """

    image: bytes | np.ndarray | None = None
    audio: bytes | np.ndarray | None = None
    text: str | None = None

    def modalities(self) -> list[str]:
        return [m for m in ("image", "audio", "text") if getattr(self, m) is not None]


@dataclass
class DecodedRow:
    """One row ready for collation: arrays in the model's decode contract."""

    image: np.ndarray | None = None  # uint8 [H, W, 3] at the model's size
    audio: np.ndarray | None = None  # float32 [T] at the model's rate, T <= max_samples
    text_ids: np.ndarray | None = None  # int64 [L], L <= max_tokens, L >= 1
    #: Seconds spent decoding each modality (for metrics).
    decode_seconds: dict[str, float] = field(default_factory=dict)

    def modalities(self) -> list[str]:
        present = []
        if self.image is not None:
            present.append("image")
        if self.audio is not None:
            present.append("audio")
        if self.text_ids is not None:
            present.append("text")
        return present


#: The graph outputs of one row: output name -> array without the batch axis.
RowOutputs = dict[str, np.ndarray]
