"""One request row → the arrays one model takes, per that model's config."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile

from fusionserve.service.errors import UnprocessableInput
from fusionserve.service.model.code import ModelCode, load_model_code
from fusionserve.service.model.config import CONFIG_FILE, TOKENIZER_FILE, AudioSpec, ModelConfig
from fusionserve.service.model.rows import DecodedRow, RawInputs, RowOutputs
from fusionserve.service.preprocess.audio import decode_audio
from fusionserve.service.preprocess.image import decode_image, header_pixels
from fusionserve.service.preprocess.text import TextEncoder

if TYPE_CHECKING:
    from fusionserve.service.batching.cost_gate import CostGate


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

    def decode(self, raw: RawInputs, gate: CostGate | None = None) -> DecodedRow:
        """Decode every modality ``raw`` carries; ``decode_seconds`` records each one's time.

        With a ``gate`` that has a bound, the row's cost is reserved there after
        the image header is read and before anything is decoded (Overloaded when
        it does not fit), then corrected to the decoded sizes (``row.reserved``).
        """
        if gate is None or gate.bound is None:
            return self._decode(raw)
        costs = self.config.batching.costs
        estimate = costs.row
        if raw.image is not None and costs.image_megapixel > 0:
            estimate += costs.image_megapixel * header_pixels(raw.image) / 1e6
        gate.reserve(estimate)
        try:
            row = self._decode(raw)
        except BaseException:
            gate.release(estimate)
            raise
        row.reserved = costs.of(row.sizes)
        gate.adjust(row.reserved - estimate)
        return row

    def _decode(self, raw: RawInputs) -> DecodedRow:
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
            info: dict[str, int] = {}
            row.image = decode_image(raw.image, spec.image, info=info)
            row.decode_seconds["image"] = time.perf_counter() - start
            row.sizes["image"] = info.get("pixels", spec.image.height * spec.image.width)
        if raw.audio is not None and spec.audio is not None:
            start = time.perf_counter()
            row.audio = decode_audio(raw.audio, spec.audio)
            row.decode_seconds["audio"] = time.perf_counter() - start
            row.sizes["audio"] = row.audio.shape[0] / spec.audio.sample_rate
            given = audio_length(raw.audio, row.audio, spec.audio)
            if given > row.audio.shape[0]:
                row.truncated["audio"] = (given, int(row.audio.shape[0]))
        if raw.text is not None and self._text is not None:
            start = time.perf_counter()
            row.text_ids, tokens = self._text.encode_counted(raw.text)
            row.decode_seconds["text"] = time.perf_counter() - start
            row.sizes["text"] = row.text_ids.shape[0]
            if tokens > row.text_ids.shape[0]:
                row.truncated["text"] = (tokens, int(row.text_ids.shape[0]))
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


def audio_length(raw: bytes | np.ndarray, kept: np.ndarray, spec: AudioSpec) -> int:
    """Samples (at the model's rate) of the audio as given, to tell a crop at ``max_samples``.

    Only asked when the decoded audio filled ``max_samples``. The header is
    read again (no decoding); a format whose header does not say its length
    counts as cropped (it filled the bound).
    """
    if kept.shape[0] < spec.max_samples:
        return int(kept.shape[0])
    if isinstance(raw, np.ndarray):
        return int(raw.shape[0])
    try:
        info = soundfile.info(io.BytesIO(raw))
        frames, rate = int(info.frames), int(info.samplerate)
    except Exception:  # not a format libsndfile reads: it filled the bound
        return int(kept.shape[0]) + 1
    if frames <= 0 or rate <= 0 or frames >= 2**62:
        return int(kept.shape[0]) + 1
    return frames * spec.sample_rate // rate  # floor: a resampling round-off is no crop
