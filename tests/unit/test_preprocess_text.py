"""Text encoding through a real ``tokenizer.json`` written by the tokenizers library."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from fusionserve.service.errors import ConfigError, InvalidInput, LimitExceeded
from fusionserve.service.model.config import TextSpec
from fusionserve.service.preprocess.text import TextEncoder
from tests.fixtures_media import write_wordlevel_tokenizer

WORDS = ["a", "handwritten", "seven", "digit", "spoken", "zero", "one"]  # ids 2..8


@pytest.fixture
def tokenizer_path(tmp_path: Path) -> Path:
    return write_wordlevel_tokenizer(tmp_path / "tokenizer.json", WORDS)


def encoder(path: Path, max_tokens: int = 16, max_chars: int = 200) -> TextEncoder:
    return TextEncoder.from_file(path, TextSpec(max_tokens=max_tokens, max_chars=max_chars))


def test_encodes_lowercased_words_to_int64_ids(tokenizer_path):
    ids = encoder(tokenizer_path).encode("A handwritten SEVEN, digit!")
    assert ids.dtype == np.int64 and ids.ndim == 1
    assert ids.tolist() == [2, 3, 4, 5]


def test_unknown_words_are_unk(tokenizer_path):
    assert encoder(tokenizer_path).encode("a purple seven").tolist() == [2, 1, 4]
    assert encoder(tokenizer_path).encode("xyzzy").tolist() == [1]


def test_long_token_sequences_keep_the_first_max_tokens(tokenizer_path):
    ids = encoder(tokenizer_path, max_tokens=3).encode("zero one seven digit spoken")
    assert ids.tolist() == [7, 8, 4]


def test_max_chars_is_a_hard_limit(tokenizer_path):
    enc = encoder(tokenizer_path, max_chars=10)
    assert enc.encode("zero   one").tolist() == [7, 8]  # exactly 10 characters
    with pytest.raises(LimitExceeded, match="field 'text': 11 characters exceeds max_chars 10") as err:
        enc.encode("zero    one")
    assert err.value.details == {"field": "text", "limit": "max_chars", "max": 10, "actual": 11}


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_empty_text_is_invalid(tokenizer_path, text):
    with pytest.raises(InvalidInput, match="field 'text': empty text"):
        encoder(tokenizer_path).encode(text)


def test_text_without_tokens_is_invalid(tokenizer_path):
    with pytest.raises(InvalidInput, match="no tokens"):
        encoder(tokenizer_path).encode("?!... ,;")


def test_non_string_is_invalid(tokenizer_path):
    with pytest.raises(InvalidInput, match="must be a string"):
        encoder(tokenizer_path).encode(b"seven")  # type: ignore[arg-type]


def test_padding_and_truncation_stored_in_the_file_are_ignored(tokenizer_path, tmp_path):
    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.enable_padding(length=12, pad_id=0)
    tok.enable_truncation(max_length=1)
    padded = tmp_path / "padded.json"
    tok.save(str(padded))
    assert encoder(padded, max_tokens=4).encode("zero one seven").tolist() == [7, 8, 4]


def test_missing_tokenizer_is_a_config_error_naming_the_file(tmp_path):
    missing = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(ConfigError, match=r"nope/tokenizer\.json: tokenizer file not found") as err:
        encoder(missing)
    assert err.value.details["file"] == str(missing)


def test_unreadable_tokenizer_is_a_config_error(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot load tokenizer"):
        encoder(bad)
