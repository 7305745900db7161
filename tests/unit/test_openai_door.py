"""The OpenAI embeddings door's own rules, without a server: inputs, data URLs, model fit."""

from __future__ import annotations

import base64
from types import SimpleNamespace

import numpy as np
import pytest

from fusionserve.service.errors import InvalidInput, UnsupportedMediaType
from fusionserve.service.http.openai import _check_model_takes, _inputs, _row, _vector
from fusionserve.service.model.config import ModelConfig


def _dataplane_with(modalities: dict[str, dict[str, int]]) -> SimpleNamespace:
    config = ModelConfig.model_validate(
        {
            "name": "vision",
            "task": "embed",
            "modalities": modalities,
            "outputs": [{"name": "fused_embedding", "kind": "embedding", "dims": 32}],
            "tokenizer_file": None,
        }
    )
    return SimpleNamespace(model_info=lambda model: SimpleNamespace(config=config))


def test_text_to_a_model_without_text_is_400_saying_what_it_takes() -> None:
    dataplane = _dataplane_with(
        {"image": {"height": 8, "width": 8}, "audio": {"sample_rate": 8000, "max_samples": 80}}
    )
    with pytest.raises(
        InvalidInput, match=r"input\[0\]: model 'vision' takes no text; it takes image, audio"
    ):
        _check_model_takes(dataplane, "vision", [_row("a photo of a seven", 0)])  # type: ignore[arg-type]


def test_data_urls_to_that_model_are_fine() -> None:
    dataplane = _dataplane_with({"image": {"height": 8, "width": 8}})
    row = _row("data:image/png;base64," + base64.b64encode(b"\x89PNG").decode(), 0)
    assert _check_model_takes(dataplane, "vision", [row]) == 32  # type: ignore[arg-type]


def test_data_url_media_types_route_to_the_modality() -> None:
    payload = base64.b64encode(b"anything").decode()
    assert _row(f"data:image/heic;base64,{payload}", 0).image == b"anything"
    assert _row(f"data:audio/webm;base64,{payload}", 0).audio == b"anything"
    assert _row(f"data:video/mp4;base64,{payload}", 0).audio == b"anything"  # its soundtrack
    with pytest.raises(UnsupportedMediaType, match="data URL type 'application/pdf'"):
        _row(f"data:application/pdf;base64,{payload}", 3)
    with pytest.raises(InvalidInput, match=r"input\[1\]: a data URL must be"):
        _row("data:image/png,rawbytes", 1)


@pytest.mark.parametrize("value", [None, 5, [1, 2], ["ok", 3], {"text": "x"}])
def test_input_must_be_strings(value: object) -> None:
    with pytest.raises(InvalidInput, match="'input' must be a string or a list of strings"):
        _inputs(value)


def test_base64_is_little_endian_float32() -> None:
    values = np.array([0.5, -1.0, 3.25], dtype=np.float32)
    encoded = _vector(values, "base64")
    assert isinstance(encoded, str)
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(encoded), dtype="<f4"), values)
    assert _vector(values, "float") == [0.5, -1.0, 3.25]
