"""``Preprocessor``: one row per a model's config, with real files and a real tokenizer."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fusionserve.service.errors import ConfigError, InvalidInput, UnprocessableInput
from fusionserve.service.model.config import ModelConfig
from fusionserve.service.model.rows import RawInputs
from fusionserve.service.preprocess import Preprocessor
from tests.fixtures_media import (
    digit_like_image,
    jpeg_bytes,
    png_bytes,
    sine,
    wav_bytes,
    write_wordlevel_tokenizer,
)


def make_config(**modalities: Any) -> ModelConfig:
    return ModelConfig.model_validate(
        {
            "name": "digits-test",
            "task": "classify",
            "modalities": modalities,
            "outputs": [{"name": "class_logits", "kind": "logits", "dims": 10}],
        }
    )


IMAGE = {"height": 28, "width": 28}
AUDIO = {"sample_rate": 16_000, "max_samples": 16_000}
TEXT = {"max_tokens": 8}


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    write_wordlevel_tokenizer(tmp_path / "tokenizer.json", ["seven", "one"])
    return tmp_path


@pytest.fixture
def fusion(model_dir: Path) -> Preprocessor:
    return Preprocessor(make_config(image=IMAGE, audio=AUDIO, text=TEXT), model_dir)


def test_decodes_every_modality(fusion):
    raw = RawInputs(
        image=png_bytes(digit_like_image(7)), audio=wav_bytes(sine(seconds=0.5), 16_000), text="Seven"
    )
    row = fusion.decode(raw)
    assert row.image is not None and row.image.shape == (28, 28, 3) and row.image.dtype == np.uint8
    assert row.audio is not None and row.audio.shape == (8000,) and row.audio.dtype == np.float32
    assert row.text_ids is not None and row.text_ids.tolist() == [2]
    assert row.modalities() == ["image", "audio", "text"]
    assert set(row.decode_seconds) == {"image", "audio", "text"}
    assert all(s >= 0 for s in row.decode_seconds.values())


def test_decodes_a_subset(fusion):
    row = fusion.decode(RawInputs(text="one seven"))
    assert row.modalities() == ["text"] and row.image is None and row.audio is None
    assert list(row.decode_seconds) == ["text"]


def test_no_modality_is_unprocessable(fusion):
    with pytest.raises(UnprocessableInput, match="no modality"):
        fusion.decode(RawInputs())


def test_a_modality_the_model_does_not_take_is_invalid(model_dir):
    image_only = Preprocessor(make_config(image=IMAGE), model_dir)
    with pytest.raises(InvalidInput, match="model 'digits-test' does not take audio") as err:
        image_only.decode(RawInputs(image=png_bytes(digit_like_image()), audio=wav_bytes(sine())))
    assert err.value.details["field"] == "audio"


def test_empty_fields_name_the_field(fusion):
    for raw, field in [
        (RawInputs(image=b""), "image"),
        (RawInputs(audio=b""), "audio"),
        (RawInputs(text=""), "text"),
    ]:
        with pytest.raises(InvalidInput, match=f"field '{field}'"):
            fusion.decode(raw)


def test_text_model_needs_its_tokenizer_file(tmp_path):
    with pytest.raises(ConfigError, match=r"tokenizer\.json: tokenizer file not found") as err:
        Preprocessor(make_config(text=TEXT), tmp_path)
    assert err.value.details["file"] == str(tmp_path / "tokenizer.json")


def test_model_without_text_needs_no_tokenizer(tmp_path):
    pre = Preprocessor(make_config(audio=AUDIO), tmp_path)
    assert pre.decode(RawInputs(audio=wav_bytes(sine(seconds=0.1)))).audio is not None


def test_already_decoded_arrays_are_accepted(fusion):
    row = fusion.decode(RawInputs(image=np.zeros((56, 56, 3), np.uint8), audio=sine(seconds=2.0)))
    assert row.image is not None and row.image.shape == (28, 28, 3)
    assert row.audio is not None and row.audio.shape == (16_000,)


def test_concurrent_decoding_matches_serial(fusion):
    """No hidden per-instance state: threads sharing one Preprocessor get the serial answers."""
    rows = [
        RawInputs(
            image=jpeg_bytes(np.full((64 + i, 48, 3), 10 * i, np.uint8)),
            audio=wav_bytes(sine(200 + 50 * i, 0.5, 44_100), 44_100),
            text="seven one " * (i % 3 + 1),
        )
        for i in range(12)
    ]
    serial = [fusion.decode(r) for r in rows]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(fusion.decode, rows * 3))
    for i, got in enumerate(parallel):
        want = serial[i % len(rows)]
        np.testing.assert_array_equal(got.image, want.image)
        np.testing.assert_array_equal(got.audio, want.audio)
        np.testing.assert_array_equal(got.text_ids, want.text_ids)
