"""Text → int64 token ids with the model's own ``tokenizer.json``.

Using the exported tokenizer file (never a re-implementation) is what keeps
serving's ids identical to training's. Decisions a model author needs to know:

- By default no special tokens are added; the graph sees exactly the text's
  tokens. With ``special_tokens: true`` the file's own post-processor runs
  (BERT's ``[CLS] … [SEP]``), and truncation keeps room for those tokens.
- Texts longer than ``max_chars`` characters are refused; token sequences
  longer than ``max_tokens`` keep their **first** ``max_tokens`` tokens
  (``truncation: left``: their last).
- Padding and truncation settings stored in the file are switched off: the
  server pads batches itself (pad id 0 unless the config or the file says
  otherwise, with an attention mask). The ids are the file's own: no token is
  assumed to have any particular id.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from fusionserve.service.errors import ConfigError, InvalidInput, LimitExceeded
from fusionserve.service.model.config import TextSpec


class TextEncoder:
    """One model's tokenizer plus its limits; safe to share between threads."""

    def __init__(self, tokenizer: Tokenizer, spec: TextSpec) -> None:
        tokenizer.no_padding()
        tokenizer.no_truncation()
        if spec.special_tokens:
            # The tokenizer counts its own special tokens against max_length.
            tokenizer.enable_truncation(max_length=spec.max_tokens, direction=spec.truncation)
        self._tokenizer = tokenizer
        self._spec = spec

    @classmethod
    def from_file(cls, path: Path, spec: TextSpec) -> TextEncoder:
        """Load ``tokenizer.json``; a missing or unreadable file is a :class:`ConfigError` naming it."""
        if not path.is_file():
            raise ConfigError(f"{path}: tokenizer file not found", file=str(path))
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise ConfigError(f"{path}: cannot load tokenizer: {exc}", file=str(path)) from exc
        return cls(tokenizer, spec)

    def encode(self, text: str, field: str = "text") -> np.ndarray:
        """Token ids as int64 ``[L]``, ``1 <= L <= max_tokens``."""
        return self.encode_counted(text, field)[0]

    def encode_counted(self, text: str, field: str = "text") -> tuple[np.ndarray, int]:
        """Token ids as :meth:`encode`, and how many tokens the text had before the cut."""
        if not isinstance(text, str):
            raise InvalidInput(f"field {field!r}: text must be a string", field=field)
        if len(text) > self._spec.max_chars:
            raise LimitExceeded(
                f"field {field!r}: {len(text)} characters exceeds max_chars {self._spec.max_chars}",
                field=field,
                limit="max_chars",
                max=self._spec.max_chars,
                actual=len(text),
            )
        if not text.strip():
            raise InvalidInput(f"field {field!r}: empty text", field=field)
        spec = self._spec
        # encode_batch, not encode: it releases the GIL while the Rust tokenizer runs (encode
        # holds it, stalling the event loop for the whole call), and gives the same ids.
        ids = self._tokenizer.encode_batch([text], add_special_tokens=spec.special_tokens)[0].ids
        if not ids:
            raise InvalidInput(f"field {field!r}: text has no tokens the model knows", field=field)
        kept = ids[-spec.max_tokens :] if spec.truncation == "left" else ids[: spec.max_tokens]
        return np.array(kept, dtype=np.int64), len(ids)


def tokenizer_pad_id(tokenizer: Tokenizer) -> int | None:
    """The pad id a ``tokenizer.json`` declares (its padding block, else a ``[PAD]``/``<pad>`` token)."""
    padding = tokenizer.padding
    if padding is not None and "pad_id" in padding:
        return int(padding["pad_id"])
    for token in ("[PAD]", "<pad>"):
        found = tokenizer.token_to_id(token)
        if found is not None:
            return int(found)
    return None
