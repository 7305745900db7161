"""Plain data that flows through the core, independent of any protocol."""

from __future__ import annotations

from collections.abc import Callable
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
    #: Size of each input as decoded (for metrics and cost): image pixels as sent,
    #: audio seconds fed to the model, text tokens fed to the model.
    sizes: dict[str, float] = field(default_factory=dict)
    #: Cost this row holds in its model version's cost gate (released when answered).
    reserved: float = 0.0
    #: Inputs cut to the model's bound: modality -> (length given, length kept)
    #: (text in tokens, audio in samples at the model's rate). Reported in the answer.
    truncated: dict[str, tuple[int, int]] = field(default_factory=dict)

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


@dataclass(eq=False)
class DeferredRow:
    """A lone row handed to a free instance undecoded, to be decoded on that instance's thread.

    When a single-row request finds its model idle (nothing queued, nothing
    decoding, an instance waiting), decoding it on a decode thread and then
    computing it on the instance's thread costs two loop-to-thread crossings
    and runs the model on a core that has just been idle. Decoding and
    computing on the one instance thread costs one crossing, and the model
    runs right after the decode on a warm core (docs/performance.md, "The
    lone request"). ``decoded`` is set on the instance thread once decoding
    succeeds; the data plane reads it for its metrics and the answer.
    """

    raw: RawInputs
    decode: Callable[[RawInputs], DecodedRow]
    decoded: DecodedRow | None = None

    @property
    def sizes(self) -> dict[str, float]:
        """Unknown before decoding: the row is costed as a row (``Batching.costs.row``)."""
        return {}


#: What the batcher queues: a decoded row, or a lone row its instance will decode.
QueuedRow = DecodedRow | DeferredRow
