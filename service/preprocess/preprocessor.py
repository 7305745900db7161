"""One request row → the arrays one model takes, per that model's config."""

from __future__ import annotations

import time
from pathlib import Path

from service.errors import UnprocessableInput
from service.model.code import ModelCode, load_model_code
from service.model.config import CONFIG_FILE, TOKENIZER_FILE, ModelConfig
from service.model.rows import DecodedRow, RawInputs, RowOutputs
from service.preprocess.audio import decode_audio
from service.preprocess.image import decode_image
from service.preprocess.text import TextEncoder


class Preprocessor:
    """Decodes one request row per a model's config.

    Thread-safe, synchronous and CPU-bound: the caller runs :meth:`decode` in
    a thread pool (Pillow, libsndfile, soxr and numpy release the GIL, so the
    pool uses every core). Holds no per-request state.
    """

    def __init__(self, config: ModelConfig, model_dir: Path, allow_model_code: bool = False) -> None:
        self.config = config
        spec = config.modalities
        self.code: ModelCode | None = None
        if config.code_file:
            config_file = Path(model_dir) / CONFIG_FILE
            self.code = load_model_code(Path(model_dir), config.code_file, allow_model_code, config_file)
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
                raise UnprocessableInput(
                    f"model {self.config.name!r} does not take {name} (it takes {taken})", field=name
                )
        for needed in spec.required():
            if needed.value not in present:
                raise UnprocessableInput(
                    f"model {self.config.name!r} needs {needed.value} in every request: its graph has no "
                    f"presence mask for {needed.value}, so it cannot answer without one",
                    field=needed.value,
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
        if self.code is not None and self.code.preprocess is not None:
            start = time.perf_counter()
            arrays = {
                k: v
                for k, v in (("image", row.image), ("audio", row.audio), ("text_ids", row.text_ids))
                if v is not None
            }
            for key, value in self.code.run_preprocess(arrays).items():
                setattr(row, key, value)
            row.decode_seconds["code"] = time.perf_counter() - start
        return row

    @property
    def postprocesses(self) -> bool:
        return self.code is not None and self.code.postprocess is not None

    def postprocess(self, outputs: list[RowOutputs]) -> list[RowOutputs]:
        """The entry's own ``postprocess`` on each row's graph outputs (in a decode thread)."""
        assert self.code is not None
        return [self.code.run_postprocess(row) for row in outputs]
