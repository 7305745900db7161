"""Per-row decode cost of a mapped model versus the bundled contract, same files, same sizes.

Both setups decode the same JPEG (640x480 → 224x224) and the same sentence;
the bundled contract feeds uint8 NHWC and pads text to the batch's longest
row, the mapped one (the worked example's: float32 NCHW, ImageNet mean/std,
[CLS]/[SEP], fixed 64 tokens + token types) does its conversion on the batch.
One row's cost = ``Preprocessor.decode`` + its share of ``collate`` over a
batch of ``--batch`` rows. Rounds alternate the two setups and are compared
pairwise (benchmarks/stats.py), because a shared machine drifts.

    .venv/bin/python benchmarks/decode_cost.py --rounds 12
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "byom"))

from benchmarks.stats import median_interval, relative_gains
from fusionserve.service.model.config import ModelConfig, parse_model_config
from fusionserve.service.model.feeds import collate
from fusionserve.service.model.rows import RawInputs
from fusionserve.service.preprocess import Preprocessor

TEXT = "a small red cat sitting on the mat next to a big black dog"


def _configs() -> dict[str, ModelConfig]:
    outputs = [{"name": "logits", "kind": "logits", "dims": 4}]
    bundled = {
        "name": "bundled",
        "task": "classify",
        "modalities": {"image": {"height": 224, "width": 224}, "text": {"max_tokens": 64}},
        "outputs": outputs,
    }
    mapped = {
        "name": "mapped",
        "task": "classify",
        "modalities": {
            "image": {
                "height": 224,
                "width": 224,
                "input": "pixel_values",
                "mask_input": None,
                "dtype": "float32",
                "layout": "NCHW",
                "scale": 1 / 255,
                "mean": [0.485, 0.456, 0.406],
                "std": [0.229, 0.224, 0.225],
            },
            "text": {
                "max_tokens": 64,
                "input": "input_ids",
                "attention_input": "attention_mask",
                "token_type_input": "token_type_ids",
                "mask_input": None,
                "special_tokens": True,
                "padding": "fixed",
            },
        },
        "outputs": outputs,
    }
    return {"bundled": parse_model_config(bundled, "bench"), "mapped": parse_model_config(mapped, "bench")}


def _jpeg() -> bytes:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:480, 0:640]
    pixels = np.stack([(xx * (c + 1) + yy) % 256 for c in range(3)], axis=2) + rng.normal(
        0, 10, (480, 640, 3)
    )
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(out, format="JPEG", quality=90)
    return out.getvalue()


def _per_row_seconds(pre: Preprocessor, config: ModelConfig, raw: RawInputs, batch: int, reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        rows = [pre.decode(raw) for _ in range(batch)]
        collate(rows, config)
    return (time.perf_counter() - start) / (reps * batch)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=10, help="batches per setup per round")
    args = parser.parse_args()
    import fusion_model

    configs = _configs()
    raw = RawInputs(image=_jpeg(), text=TEXT)
    with tempfile.TemporaryDirectory() as tmp:
        fusion_model.build_tokenizer().save(str(Path(tmp) / "tokenizer.json"))
        pres = {name: Preprocessor(config, Path(tmp)) for name, config in configs.items()}
        for name in configs:  # warm up both
            _per_row_seconds(pres[name], configs[name], raw, args.batch, 2)
        times: dict[str, list[float]] = {name: [] for name in configs}
        collate_only: dict[str, list[float]] = {name: [] for name in configs}
        for r in range(args.rounds):
            order = list(configs) if r % 2 == 0 else list(reversed(configs))
            for name in order:
                times[name].append(_per_row_seconds(pres[name], configs[name], raw, args.batch, args.reps))
                rows = [pres[name].decode(raw) for _ in range(args.batch)]
                start = time.perf_counter()
                for _ in range(args.reps):
                    collate(rows, configs[name])
                collate_only[name].append((time.perf_counter() - start) / (args.reps * args.batch))
    for name in configs:
        print(
            f"{name:8s} decode+collate per row: median {statistics.median(times[name]) * 1e6:8.1f} us "
            f"(collate share {statistics.median(collate_only[name]) * 1e6:6.1f} us) over {args.rounds} rounds"
        )
    gain = median_interval(relative_gains(times["mapped"], times["bundled"]))
    verdict = gain.verdict(lower_is_better=True)
    print(
        f"mapped vs bundled, per-row time (paired rounds): {gain.median:+.1%} "
        f"[{gain.low:+.1%}, {gain.high:+.1%}] mapped is {verdict}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
