"""Text → int64 token ids with the model's own ``tokenizer.json``.

Using the exported tokenizer file (never a re-implementation) is what keeps
serving's ids identical to training's. Decisions a model author needs to know:

- No special tokens are added; the graph sees exactly the text's tokens.
- Texts longer than ``max_chars`` characters are refused; token sequences
  longer than ``max_tokens`` keep their **first** ``max_tokens`` tokens.
- Padding and truncation settings stored in the file are switched off: the
  server pads batches itself (pad id 0, with an attention mask).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from service.errors import ConfigError, InvalidInput, LimitExceeded
from service.model.config import TextSpec


class TextEncoder:
    """One model's tokenizer plus its limits; safe to share between threads."""

    def __init__(self, tokenizer: Tokenizer, spec: TextSpec) -> None:
        tokenizer.no_padding()
        tokenizer.no_truncation()
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
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        if not ids:
            raise InvalidInput(f"field {field!r}: text has no tokens the model knows", field=field)
        return np.array(ids[: self._spec.max_tokens], dtype=np.int64)
