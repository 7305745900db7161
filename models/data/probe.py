"""Quick single-modality baselines to calibrate the dataset's ambiguity.

sklearn models on simple features (pixels, numpy log-mel statistics, bag of
words), trained on train and scored on val; plus a late fusion (sum of the
three log-probabilities) to show what combining buys. With ``cnn=True`` small
torch nets are trained too (closer to what the fusion models reach).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fusionserve.models.data.dataset import Split, TrimodalDataset

N_MELS = 40
N_FFT = 512
HOP = 160


def mel_filterbank(sr: int = 16000, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    def hz2mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    mels = np.linspace(hz2mel(np.array(20.0)), hz2mel(np.array(sr / 2)), n_mels + 2)
    hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    bins = np.fft.rfftfreq(n_fft, 1.0 / sr)
    fb = np.zeros((n_mels, bins.size))
    for m in range(n_mels):
        lo, c, hi = hz[m], hz[m + 1], hz[m + 2]
        fb[m] = np.clip(np.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)), 0, None)
    return fb


def log_mel(audio: np.ndarray) -> np.ndarray:
    """[N,T] float32 → [N,frames,N_MELS] log-mel (numpy only)."""
    n, t = audio.shape
    frames = 1 + (t - N_FFT) // HOP
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(frames)[:, None]
    win = np.hanning(N_FFT).astype(np.float32)
    fb = mel_filterbank().astype(np.float32)
    out = np.empty((n, frames, N_MELS), dtype=np.float32)
    for i0 in range(0, n, 256):
        x = audio[i0 : i0 + 256][:, idx] * win
        p = np.abs(np.fft.rfft(x, axis=-1)) ** 2
        out[i0 : i0 + 256] = np.log(p @ fb.T + 1e-8)
    return out


def audio_features(split: Split) -> np.ndarray:
    """Per-clip statistics plus the 32 loudest-centred frames, each row standardised per clip."""
    lm = log_mel(split.audio)
    nfr = lm.shape[1]
    valid = (np.arange(nfr)[None, :] * HOP + N_FFT) <= split.audio_length[:, None]
    lm = lm - np.where(valid[..., None], lm, 0).sum(1, keepdims=True) / valid.sum(1)[:, None, None]
    energy = np.where(valid, lm.mean(-1), -np.inf)
    # Smooth the energy and centre a 32-frame window on its peak.
    k = np.ones(15) / 15
    sm = np.stack([np.convolve(np.where(np.isfinite(e), e, -50), k, mode="same") for e in energy])
    centre = sm.argmax(1)
    win = 32
    starts = np.clip(centre - win // 2, 0, nfr - win)
    crops = np.stack([lm[i, s : s + win] for i, s in enumerate(starts)])
    stats = np.concatenate(
        [
            np.where(valid[..., None], lm, 0).std(1),
            np.where(valid[..., None], lm, -50).max(1),
        ],
        axis=1,
    )
    return np.concatenate([crops.reshape(len(crops), -1), stats], axis=1)


def image_features(split: Split) -> np.ndarray:
    x = split.image.astype(np.float32).mean(-1) / 255.0
    x = x - x.mean((1, 2), keepdims=True)
    x = x / (x.std((1, 2), keepdims=True) + 1e-6)
    return x.reshape(len(x), -1)


def _fit_predict(name: str, xtr: np.ndarray, ytr: np.ndarray, xva: np.ndarray) -> np.ndarray:
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(xtr)
    clf = MLPClassifier(
        hidden_layer_sizes=(256,), alpha=1e-3, max_iter=60, early_stopping=True, random_state=0
    )
    clf.fit(sc.transform(xtr), ytr)
    return clf.predict_proba(sc.transform(xva))


def run_probe(ds: TrimodalDataset, cnn: bool = False) -> dict[str, float]:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    tr, va = ds.train, ds.val
    probs: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    probs["image"] = _fit_predict("image", image_features(tr), tr.label, image_features(va))
    probs["audio"] = _fit_predict("audio", audio_features(tr), tr.label, audio_features(va))
    vec = CountVectorizer(ngram_range=(1, 2), token_pattern=r"[^\s\W]+|[^\w\s]").fit(tr.text)
    lr = LogisticRegression(C=10.0, max_iter=2000).fit(vec.transform(tr.text), tr.label)
    probs["text"] = lr.predict_proba(vec.transform(va.text))
    res = {m: float((p.argmax(1) == va.label).mean()) for m, p in probs.items()}
    logp = {m: np.log(np.clip(p, 1e-6, 1)) for m, p in probs.items()}
    for combo in (("image", "audio"), ("image", "text"), ("audio", "text"), ("image", "audio", "text")):
        res["+".join(combo)] = float((sum(logp[m] for m in combo).argmax(1) == va.label).mean())
    wrong = np.stack([p.argmax(1) != va.label for p in probs.values()])
    print(
        f"probe on val ({len(va)} rows; sklearn MLP on pixels / log-mel, LR on 1-2-gram BoW;"
        f" {time.perf_counter() - t0:.0f}s):"
    )
    for k, v in res.items():
        print(f"  {k:18s} {v:.3f}")
    print(
        f"  rows with >=2 modalities wrong: {(wrong.sum(0) >= 2).mean():.3f}"
        f" (independent errors would give {_indep_two(wrong.mean(1)):.3f})"
    )
    if cnn:
        from fusionserve.models.data.probe_torch import run_torch_probe

        run_torch_probe(ds)
    return res


def _indep_two(p: np.ndarray) -> float:
    a, b, c = p
    return float(a * b * (1 - c) + a * c * (1 - b) + b * c * (1 - a) + a * b * c)
