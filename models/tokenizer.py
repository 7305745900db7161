"""Word-level tokenizer for the dataset's texts (HF ``tokenizers``; no torch).

The saved ``tokenizer.json`` is what the server loads: its normaliser
lowercases (NFKC + Lowercase), the pre-tokenizer splits on whitespace and
punctuation, ``[PAD]`` is id 0 and ``[UNK]`` id 1. No padding or truncation
is set in the file: the server pads per batch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel

PAD, UNK = "[PAD]", "[UNK]"
PAD_ID, UNK_ID = 0, 1
MAX_TOKENS = 16


def _pipeline() -> tuple[normalizers.Normalizer, pre_tokenizers.PreTokenizer]:
    norm = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    pre = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return norm, pre


def words(texts: Iterable[str]) -> list[str]:
    """The tokens the tokenizer's normaliser and pre-tokenizer make of ``texts``."""
    norm, pre = _pipeline()
    out: list[str] = []
    for t in texts:
        out += [w for w, _ in pre.pre_tokenize_str(norm.normalize_str(t))]
    return out


def build_tokenizer(texts: list[str]) -> Tokenizer:
    """A WordLevel tokenizer whose vocabulary is every token of ``texts``.

    Ids are deterministic: [PAD]=0, [UNK]=1, then tokens by falling count, ties
    alphabetical.
    """
    counts = Counter(words(texts))
    ordered = sorted(counts, key=lambda w: (-counts[w], w))
    vocab = {PAD: PAD_ID, UNK: UNK_ID}
    for w in ordered:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer, tok.pre_tokenizer = _pipeline()
    tok.add_special_tokens([PAD, UNK])  # already ids 0 and 1; never split or lowercased
    return tok


def encode_texts(
    tok: Tokenizer, texts: list[str], max_tokens: int = MAX_TOKENS
) -> tuple[np.ndarray, np.ndarray]:
    """ids int64 [N,L] (pad 0) and attention int64 [N,L]; L = longest row (>= 1), at most max_tokens.

    An empty text gives one [UNK] token, so every row attends to at least one position.
    """
    encs = tok.encode_batch(list(texts), add_special_tokens=False)
    rows = [(e.ids[:max_tokens] or [UNK_ID]) for e in encs]
    length = max([1, *(len(r) for r in rows)])
    ids = np.full((len(rows), length), PAD_ID, dtype=np.int64)
    att = np.zeros((len(rows), length), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        att[i, : len(r)] = 1
    return ids, att
