"""Dataset splits as tensors, cached encoder features, and modality dropout.

Training runs in two stages (see ``fusionserve.models.train``): the encoders first learn
each modality on its own, then every fusion strategy and the joint-embedding
heads learn on top of the frozen encoders. Freezing lets us encode each split
once and train all eight strategies on the cached token features, which is
what keeps ``build-repo`` within its time budget on two CPU cores.

The audio front end has no parameters, so its log-mel output is cached too.
For that cache we compute the STFT with ``torch.stft`` (an FFT, far cheaper
than the graph's DFT-as-conv1d on thousands of clips); the two agree to float
rounding, which ``tests/unit/test_encoders.py`` checks.
"""

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from fusionserve.models.encoders import EncoderSet, LogMel


class SplitLike(Protocol):
    image: np.ndarray
    audio: np.ndarray
    audio_length: np.ndarray
    text: list[str]
    label: np.ndarray


@dataclass
class SplitTensors:
    """One split in the graph's input contract (without presence masks)."""

    image: Tensor  # uint8 [N,H,W,3]
    audio: Tensor  # float32 [N,T]
    audio_length: Tensor  # int64 [N]
    text_ids: Tensor  # int64 [N,L]
    text_attention: Tensor  # int64 [N,L]
    label: Tensor  # int64 [N]

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def rows(self, index: Tensor | slice) -> "SplitTensors":
        return SplitTensors(
            self.image[index],
            self.audio[index],
            self.audio_length[index],
            self.text_ids[index],
            self.text_attention[index],
            self.label[index],
        )

    def graph_inputs(self, present: "list[Tensor] | None" = None) -> dict[str, Tensor]:
        """Feeds named as the graph's inputs; every modality present unless told otherwise."""
        n = len(self)
        if present is None:
            present = [torch.ones(n, dtype=torch.bool)] * 3
        return {
            "image": self.image,
            "image_mask": present[0],
            "audio": self.audio,
            "audio_length": self.audio_length,
            "audio_mask": present[1],
            "text_ids": self.text_ids,
            "text_attention": self.text_attention,
            "text_mask": present[2],
        }


def split_tensors(split: SplitLike, text_ids: np.ndarray, text_attention: np.ndarray) -> SplitTensors:
    return SplitTensors(
        torch.from_numpy(np.ascontiguousarray(split.image)),
        torch.from_numpy(np.ascontiguousarray(split.audio, dtype=np.float32)),
        torch.from_numpy(np.asarray(split.audio_length, dtype=np.int64)),
        torch.from_numpy(np.asarray(text_ids, dtype=np.int64)),
        torch.from_numpy(np.asarray(text_attention, dtype=np.int64)),
        torch.from_numpy(np.asarray(split.label, dtype=np.int64)),
    )


def fast_logmel(frontend: LogMel, audio: Tensor, length: Tensor, chunk: int = 512) -> tuple[Tensor, Tensor]:
    """``frontend(audio, length)`` computed with an FFT, in chunks, without gradients."""
    window = torch.hann_window(frontend.n_fft, periodic=True, dtype=torch.float32)
    outs: list[Tensor] = []
    valids: list[Tensor] = []
    with torch.no_grad():
        for start in range(0, audio.shape[0], chunk):
            wave = audio[start : start + chunk]
            spec = torch.stft(
                wave, frontend.n_fft, frontend.hop, window=window, center=False, return_complex=True
            )
            power = spec.real**2 + spec.imag**2  # [B,F,frames]
            mel = torch.matmul(power.transpose(1, 2), frontend.mel).transpose(1, 2)
            outs.append(torch.log(mel + 1e-6))
            starts = torch.arange(spec.shape[-1]) * frontend.hop
            valids.append((starts[None, :] + frontend.n_fft) <= length[start : start + chunk, None])
    return torch.cat(outs), torch.cat(valids)


@dataclass
class Features:
    """Frozen-encoder outputs of one split: what the fusion strategies train on."""

    tokens: list[Tensor]
    masks: list[Tensor]
    pooled: list[Tensor]
    label: Tensor

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def rows(self, index: Tensor) -> "Features":
        return Features(
            [t[index] for t in self.tokens],
            [m[index] for m in self.masks],
            [p[index] for p in self.pooled],
            self.label[index],
        )


def encode_split(
    encoders: EncoderSet, data: SplitTensors, logmel: tuple[Tensor, Tensor], chunk: int = 500
) -> Features:
    """Run the frozen encoders over a whole split, in chunks."""
    encoders.eval()
    parts: list[tuple[list[Tensor], list[Tensor], list[Tensor]]] = []
    with torch.no_grad():
        for start in range(0, len(data), chunk):
            sl = slice(start, start + chunk)
            enc = [
                encoders.image(data.image[sl]),
                encoders.audio.encode_features(logmel[0][sl], logmel[1][sl]),
                encoders.text(data.text_ids[sl], data.text_attention[sl]),
            ]
            parts.append(([e.tokens for e in enc], [e.mask for e in enc], [e.pooled for e in enc]))
    return Features(
        [torch.cat([p[0][i] for p in parts]) for i in range(3)],
        [torch.cat([p[1][i] for p in parts]) for i in range(3)],
        [torch.cat([p[2][i] for p in parts]) for i in range(3)],
        data.label,
    )


#: Every non-empty modality subset as (image, audio, text) presence.
SUBSETS: dict[str, tuple[bool, bool, bool]] = {
    "image": (True, False, False),
    "audio": (False, True, False),
    "text": (False, False, True),
    "image+audio": (True, True, False),
    "image+text": (True, False, True),
    "audio+text": (False, True, True),
    "image+audio+text": (True, True, True),
}


def subset_masks(name: str, n: int) -> list[Tensor]:
    """Presence masks for ``n`` rows that all carry the named subset."""
    try:
        flags = SUBSETS[name]
    except KeyError:
        raise ValueError(f"unknown modality subset {name!r}; known: {', '.join(SUBSETS)}") from None
    return [torch.full((n,), f, dtype=torch.bool) for f in flags]


def modality_dropout(n: int, generator: torch.Generator, p_all: float = 0.4) -> list[Tensor]:
    """Random presence masks: all three with probability ``p_all``, else a uniform non-empty
    proper subset, so every subset is trained and no row is ever left with nothing."""
    table = torch.tensor(list(SUBSETS.values()), dtype=torch.bool)  # [7,3], last = all
    partial = torch.randint(0, len(SUBSETS) - 1, (n,), generator=generator)
    full = torch.rand(n, generator=generator) < p_all
    choice = torch.where(full, torch.full_like(partial, len(SUBSETS) - 1), partial)
    rows = table[choice]
    return [rows[:, i] for i in range(3)]


@dataclass
class PreparedData:
    """A dataset ready for training: tensors, cached log-mel, tokenizer and identity."""

    splits: dict[str, SplitTensors]
    logmel: dict[str, tuple[Tensor, Tensor]]
    labels: list[str]
    tokenizer_json: str
    vocab_size: int
    dataset_hash: str


class DatasetLike(Protocol):
    labels: list[str]

    def splits(self) -> "dict[str, SplitLike]": ...

    def content_hash(self) -> str: ...


def prepare_data(ds: DatasetLike, max_tokens: int = 16, dataset_hash: str | None = None) -> PreparedData:
    """Tokenise with a tokenizer built on the training texts, and cache each split's log-mel."""
    from fusionserve.models.tokenizer import build_tokenizer, encode_texts

    parts = ds.splits()
    tok = build_tokenizer(list(parts["train"].text))
    frontend = LogMel()
    splits: dict[str, SplitTensors] = {}
    logmel: dict[str, tuple[Tensor, Tensor]] = {}
    for name, split in parts.items():
        ids, attention = encode_texts(tok, list(split.text), max_tokens=max_tokens)
        splits[name] = split_tensors(split, ids, attention)
        logmel[name] = fast_logmel(frontend, splits[name].audio, splits[name].audio_length)
    return PreparedData(
        splits=splits,
        logmel=logmel,
        labels=list(ds.labels),
        tokenizer_json=tok.to_str(),
        vocab_size=tok.get_vocab_size(),
        dataset_hash=dataset_hash or ds.content_hash(),
    )
