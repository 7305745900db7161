"""The heavy benchmark workload: a bigger tri-modal model and its payloads, seeded.

    python benchmarks/heavy_model.py --out /tmp/heavy-repo     # ~1 min on 2 cores

``digits-fusion`` is small (28x28 images, ~0.65 ms of model per row), so on
it the door's cost dominates. This workload makes the model's share visible
too: an image CNN on 128x128 inputs, an audio CNN on an in-graph log-mel of a
1 s, 16 kHz waveform, a 2-layer text transformer (up to 32 tokens), late
fusion, 10 classes — the project's own encoders at a larger size, randomly
initialised from a seed (the answers are meaningless; the cost is real) and
exported through ``fusionserve.models.export`` with the same parity checks as every
bundled model. The payloads are 256x256 JPEG crops of scikit-learn's sample
photos, 1 s WAVs of seeded tones and noise, and 15-word texts.

Needs torch (``.[torch]``); the server that serves the result does not.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NAME = "heavy-fusion"
IMAGE_SIDE = 128
PAYLOAD_SIDE = 256
SAMPLE_RATE = 16000
TEXT_TOKENS = 32
WORDS = 15
SEED = 0
DIM = 64
IMAGE_WIDTH = 16
VOCABULARY = [
    "the",
    "a",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "zero",
    "more",
    "less",
    "than",
    "plus",
    "minus",
    "is",
    "digit",
    "number",
    "spoken",
    "written",
    "picture",
    "sound",
    "of",
    "and",
    "after",
    "before",
    "half",
    "double",
    "near",
]


def build(out: Path, seed: int = SEED) -> Path:
    """Export the heavy model into ``out/heavy-fusion`` (replacing an older build) and return it."""
    import torch

    from fusionserve.models.classifier import ClassifierSpec, FusionClassifier
    from fusionserve.models.encoders import ImageEncoder
    from fusionserve.models.entries import MIN_AUDIO_SAMPLES
    from fusionserve.models.export import export_entry
    from fusionserve.models.tokenizer import build_tokenizer
    from fusionserve.service.model.config import ModelConfig

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(VOCABULARY)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_path = out / ".heavy-tokenizer.json"
    tokenizer.save(str(tokenizer_path))
    vocab = tokenizer.get_vocab_size()
    module = FusionClassifier(ClassifierSpec(strategy="late", vocab_size=vocab, num_classes=10, dim=DIM))
    # A narrower first layer than digits-fusion's: at 128x128 the stock width
    # made the image CNN alone ~10 ms per row on one core.
    module.encoders.image = ImageEncoder(DIM, width=IMAGE_WIDTH)
    config = ModelConfig.model_validate(
        {
            "name": NAME,
            "description": "Benchmark workload: 128x128 image CNN, log-mel audio CNN, 2-layer text "
            "transformer, late fusion (random seeded weights)",
            "backend": "onnx",
            "task": "classify",
            "modalities": {
                "image": {"height": IMAGE_SIDE, "width": IMAGE_SIDE},
                "audio": {
                    "sample_rate": SAMPLE_RATE,
                    "max_samples": SAMPLE_RATE,
                    "min_samples": MIN_AUDIO_SAMPLES,
                },
                "text": {"max_tokens": TEXT_TOKENS},
            },
            "outputs": [{"name": "class_logits", "kind": "logits", "dims": 10}],
            "batching": {"max_batch_size": 32, "max_queue_delay_ms": 2},
            "instance_groups": [{"kind": "cpu", "count": 2}],
            "onnx": {"intra_op_threads": 1},
            "metadata": {"seed": seed, "purpose": "benchmarks/heavy_model.py"},
        }
    )
    labels = [f"class-{i}" for i in range(10)]
    shutil.rmtree(out / NAME, ignore_errors=True)
    return export_entry(
        module,
        config=config,
        labels=labels,
        tokenizer_path=tokenizer_path,
        repo_dir=out,
        formats=("onnx",),
        seed=seed,
    )


def _wav(samples: np.ndarray) -> bytes:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def payloads(count: int, seed: int = SEED) -> list[tuple[bytes, bytes, str]]:
    """``count`` (JPEG 256x256, WAV 1 s, 15-word text) triples, the same for a seed."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = load_sample_images().images
    out = []
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    for _ in range(count):
        photo = photos[int(rng.integers(len(photos)))]
        y = int(rng.integers(photo.shape[0] - PAYLOAD_SIDE))
        x = int(rng.integers(photo.shape[1] - PAYLOAD_SIDE))
        crop = Image.fromarray(photo[y : y + PAYLOAD_SIDE, x : x + PAYLOAD_SIDE])
        jpeg = io.BytesIO()
        crop.save(jpeg, format="JPEG", quality=90)
        freqs = rng.uniform(150, 3000, size=3)
        tone = sum(np.sin(2 * np.pi * f * t) for f in freqs) / 6
        audio = _wav(tone + rng.normal(0, 0.05, SAMPLE_RATE))
        text = " ".join(rng.choice(VOCABULARY, size=WORDS))
        out.append((jpeg.getvalue(), audio, text))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="model repository to write heavy-fusion into")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    print(build(args.out, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
