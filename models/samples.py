"""Write one dataset row as the files a client would send (used by integration tests; no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf
from PIL import Image

if TYPE_CHECKING:
    from fusionserve.models.data.dataset import Split

SAMPLE_RATE = 16000


def write_sample_files(split: Split, index: int, out_dir: Path) -> dict[str, Path]:
    """Write ``image.png``, ``image.jpg`` (quality 95), ``audio.wav`` (16-bit PCM, 16 kHz) and
    ``text.txt`` (UTF-8) for row ``index``; return their paths by name.

    The dataset's audio lies on the 16-bit grid, so reading ``audio.wav`` back as
    float32 gives exactly ``split.audio[index, :split.audio_length[index]]``; the
    PNG is lossless, the JPEG is not.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / k for k in ("image.png", "image.jpg", "audio.wav", "text.txt")}
    img = Image.fromarray(np.ascontiguousarray(split.image[index]), mode="RGB")
    img.save(paths["image.png"], format="PNG")
    img.save(paths["image.jpg"], format="JPEG", quality=95)
    n = int(split.audio_length[index])
    pcm = np.clip(np.round(split.audio[index, :n].astype(np.float64) * 32768.0), -32768, 32767)
    sf.write(paths["audio.wav"], pcm.astype(np.int16), SAMPLE_RATE, subtype="PCM_16", format="WAV")
    paths["text.txt"].write_text(split.text[index], encoding="utf-8")
    return paths
