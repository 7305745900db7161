"""One request row → the arrays one model takes, per that model's config."""

from __future__ import annotations

import time
from pathlib import Path

from service.errors import InvalidInput, UnprocessableInput
from service.model.config import TOKENIZER_FILE, ModelConfig
from service.model.rows import DecodedRow, RawInputs
from service.preprocess.audio import decode_audio
from service.preprocess.image import decode_image
from service.preprocess.text import TextEncoder


class Preprocessor:
    """Decodes one request row per a model's config.

    Thread-safe, synchronous and CPU-bound: the caller runs :meth:`decode` in
    a thread pool (Pillow, libsndfile, soxr and numpy release the GIL, so the
    pool uses every core). Holds no per-request state.
    """

    def __init__(self, config: ModelConfig, model_dir: Path) -> None:
        self.config = config
        spec = config.modalities
        self._text: TextEncoder | None = None
        if spec.text is not None:
            path = Path(model_dir) / (config.tokenizer_file or TOKENIZER_FILE)
            self._text = TextEncoder.from_file(path, spec.text)

    def decode(self, raw: RawInputs) -> DecodedRow:
        """Decode every modality ``raw`` carries; ``decode_seconds`` records each one's time."""
        present = raw.modalities()
        if not present:
            raise UnprocessableInput("the request carries no modality: send image, audio or text")
        spec = self.config.modalities
        for name in present:
            if getattr(spec, name) is None:
                taken = ", ".join(m.value for m in spec.present())
                raise InvalidInput(
                    f"model {self.config.name!r} does not take {name} (it takes {taken})", field=name
                )
        row = DecodedRow()
        if raw.image is not None and spec.image is not None:
            start = time.perf_counter()
            row.image = decode_image(raw.image, spec.image)
            row.decode_seconds["image"] = time.perf_counter() - start
        if raw.audio is not None and spec.audio is not None:
            start = time.perf_counter()
            row.audio = decode_audio(raw.audio, spec.audio)
            row.decode_seconds["audio"] = time.perf_counter() - start
        if raw.text is not None and self._text is not None:
            start = time.perf_counter()
            row.text_ids = self._text.encode(raw.text)
            row.decode_seconds["text"] = time.perf_counter() - start
        return row
