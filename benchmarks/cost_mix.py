"""Large and small uploads mixed: does admission by cost keep the small requests' p99 bounded?

One real server holds two copies of ``digits-fusion``: ``mix-plain`` (no cost
bounds, as before) and ``mix-cost`` (``costs: {row: 1, image_megapixel: 1}``,
``max_queue_cost`` = one large photo plus room for every small client). Each round
runs the same traffic against one copy, then the other (order alternating,
rounds paired in time): ``--large`` clients send a multi-megapixel PNG in a
loop and ``--small`` clients send a 28x28 PNG with text. Reported per setup:
the small requests' p50/p99 and the large uploads answered and shed (429);
the paired verdict on small p99 uses benchmarks/stats.py's bootstrap.

    .venv/bin/python -m benchmarks.cost_mix --rounds 6 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import io
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import yaml
from PIL import Image

from benchmarks.serving import ServerProcess
from benchmarks.stats import median_interval, relative_gains
from fusionserve.service.config import default_repository_dir

SOURCE = "digits-fusion"


@dataclass
class RoundResult:
    small_ms: list[float] = field(default_factory=list)
    small_errors: int = 0
    large_ok: int = 0
    large_shed: int = 0

    def p(self, q: float) -> float:
        values = sorted(self.small_ms)
        return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def large_photo(megapixels: float, seed: int = 0) -> bytes:
    """A smooth random picture (compresses, but inflating and resizing it is real work)."""
    side = int((megapixels * 1e6) ** 0.5)
    coarse = np.random.default_rng(seed).integers(0, 256, (side // 16, side // 16, 3), dtype=np.uint8)
    return _png(np.asarray(Image.fromarray(coarse).resize((side, side), Image.Resampling.BILINEAR)))


def copies(repository: Path, dest: Path, max_queue_cost: float) -> Path:
    for name, batching in (
        ("mix-plain", {}),
        ("mix-cost", {"costs": {"row": 1.0, "image_megapixel": 1.0}, "max_queue_cost": max_queue_cost}),
    ):
        shutil.copytree(repository / SOURCE, dest / name)
        path = dest / name / "config.yaml"
        config = yaml.safe_load(path.read_text())
        config["name"] = name
        config.setdefault("batching", {}).update(batching)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


async def _client(url: str, files: dict, until: float, on_answer) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        while time.monotonic() < until:
            start = time.perf_counter()
            response = await client.post(url, files=files)
            on_answer(response.status_code, (time.perf_counter() - start) * 1000)


async def one_round(base: str, model: str, args: argparse.Namespace, big: bytes, small: bytes) -> RoundResult:
    result = RoundResult()
    url = f"{base}/v1/models/{model}/predict"
    until = time.monotonic() + args.seconds

    def on_small(status: int, ms: float) -> None:
        if status == 200:
            result.small_ms.append(ms)
        else:
            result.small_errors += 1

    def on_large(status: int, ms: float) -> None:
        if status == 200:
            result.large_ok += 1
        elif status == 429:
            result.large_shed += 1

    tasks = [
        _client(url, {"image": ("big.png", big, "image/png")}, until, on_large) for _ in range(args.large)
    ] + [
        _client(url, {"image": ("d.png", small, "image/png"), "text": (None, "seven")}, until, on_small)
        for _ in range(args.small)
    ]
    await asyncio.gather(*tasks)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=default_repository_dir())
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--large", type=int, default=4, help="clients sending large photos")
    parser.add_argument("--small", type=int, default=4, help="clients sending small items")
    parser.add_argument("--megapixels", type=float, default=8.0)
    args = parser.parse_args(argv)

    big = large_photo(args.megapixels)
    small = _png(np.zeros((28, 28, 3), np.uint8))
    large_cost = 1 + args.megapixels
    bound = large_cost + 2 * args.small  # one large photo, and room for every small client beside it
    with tempfile.TemporaryDirectory() as tmp:
        repo = copies(args.repository, Path(tmp), max_queue_cost=bound)
        server = ServerProcess(repo)
        try:
            server.wait_ready()
            results: dict[str, list[RoundResult]] = {"mix-plain": [], "mix-cost": []}
            for r in range(args.rounds):
                order = ["mix-plain", "mix-cost"] if r % 2 == 0 else ["mix-cost", "mix-plain"]
                for model in order:
                    res = asyncio.run(one_round(server.url, model, args, big, small))
                    results[model].append(res)
                    print(
                        f"round {r} {model:9s} small p50 {res.p(0.5):7.1f} ms p99 {res.p(0.99):7.1f} ms "
                        f"(n={len(res.small_ms)}, errors {res.small_errors}) "
                        f"large ok {res.large_ok} shed {res.large_shed}",
                        flush=True,
                    )
        finally:
            server.stop()
    print(f"\nbig upload: {len(big) / 1e6:.1f} MB PNG, {args.megapixels:g} MP; max_queue_cost {bound:g}")
    for model, rounds in results.items():
        p99 = [x.p(0.99) for x in rounds]
        p50 = [x.p(0.5) for x in rounds]
        ok = sum(x.large_ok for x in rounds)
        shed = sum(x.large_shed for x in rounds)
        print(
            f"{model:9s} small p50 median {statistics.median(p50):7.1f} ms, p99 median "
            f"{statistics.median(p99):7.1f} ms (max {max(p99):.1f}); large answered {ok}, shed {shed}"
        )
    gains = relative_gains(
        [x.p(0.99) for x in results["mix-cost"]], [x.p(0.99) for x in results["mix-plain"]]
    )
    interval = median_interval(gains)
    print(
        f"small p99, mix-cost vs mix-plain: {interval.median:+.1%} "
        f"[{interval.low:+.1%}, {interval.high:+.1%}] "
        f"({interval.verdict(lower_is_better=True)} for cost bounds; lower is better)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
