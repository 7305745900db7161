"""Collation: feeds per the graph contract, padding and masks, and the row-count check."""

from __future__ import annotations

import numpy as np
import pytest

from fusionserve.service.errors import InternalError
from fusionserve.service.model.config import INPUT_DTYPES, ModelConfig
from fusionserve.service.model.feeds import collate, split_outputs
from fusionserve.service.model.rows import DecodedRow


def make_config(**modalities: dict) -> ModelConfig:
    return ModelConfig.model_validate(
        {
            "name": "m",
            "task": "classify",
            "modalities": modalities,
            "outputs": [{"name": "class_logits", "kind": "logits", "dims": 3}],
        }
    )


TRIMODAL = make_config(
    image={"height": 4, "width": 5},
    audio={"sample_rate": 16000, "max_samples": 100, "min_samples": 8},
    text={"max_tokens": 16},
)


def image(value: int) -> np.ndarray:
    return np.full((4, 5, 3), value, dtype=np.uint8)


def test_feeds_are_exactly_the_graph_inputs_with_contract_dtypes() -> None:
    rows = [DecodedRow(image=image(1), audio=np.ones(3, np.float32), text_ids=np.array([5, 6]))]
    feeds, _ = collate(rows, TRIMODAL)
    assert list(feeds) == TRIMODAL.graph_input_names()
    for name, array in feeds.items():
        assert array.dtype == INPUT_DTYPES[name], name
        assert array.shape[0] == 1
        assert array.flags.c_contiguous


def test_mixed_modalities_share_a_batch_through_masks() -> None:
    rows = [
        DecodedRow(image=image(7)),
        DecodedRow(audio=np.arange(1, 11, dtype=np.float32)),
        DecodedRow(text_ids=np.array([3, 4, 5], dtype=np.int64)),
    ]
    feeds, _ = collate(rows, TRIMODAL)
    assert feeds["image"].shape == (3, 4, 5, 3)
    assert (feeds["image"][0] == 7).all() and not feeds["image"][1:].any()
    assert feeds["image_mask"].tolist() == [True, False, False]
    assert feeds["audio_mask"].tolist() == [False, True, False]
    assert feeds["text_mask"].tolist() == [False, False, True]
    assert feeds["audio_length"].tolist() == [0, 10, 0]
    assert not feeds["audio"][[0, 2]].any() and not feeds["text_ids"][:2].any()


def test_audio_padded_to_longest_with_zeros_and_ratio() -> None:
    rows = [DecodedRow(audio=np.full(10, 0.5, np.float32)), DecodedRow(audio=np.full(30, -1, np.float32))]
    feeds, padding = collate(rows, TRIMODAL)
    assert feeds["audio"].shape == (2, 30)
    assert (feeds["audio"][0, :10] == 0.5).all() and not feeds["audio"][0, 10:].any()
    assert (feeds["audio"][1] == -1).all()
    assert feeds["audio_length"].tolist() == [10, 30]
    assert padding["audio"] == pytest.approx(20 / 60)


def test_audio_never_shorter_than_min_samples_even_when_absent() -> None:
    feeds, padding = collate([DecodedRow(image=image(1))], TRIMODAL)
    assert feeds["audio"].shape == (1, 8)
    assert feeds["text_ids"].shape == (1, 1) and feeds["text_attention"].tolist() == [[0]]
    assert "audio" not in padding and "text" not in padding
    feeds, padding = collate([DecodedRow(audio=np.ones(2, np.float32))], TRIMODAL)
    assert feeds["audio"].shape == (1, 8)
    assert padding["audio"] == pytest.approx(6 / 8)


def test_text_padded_with_zero_and_attention_marks_real_tokens() -> None:
    rows = [DecodedRow(text_ids=np.array([9, 8, 7, 6])), DecodedRow(), DecodedRow(text_ids=np.array([2]))]
    feeds, padding = collate(rows, TRIMODAL)
    assert feeds["text_ids"].tolist() == [[9, 8, 7, 6], [0, 0, 0, 0], [2, 0, 0, 0]]
    assert feeds["text_attention"].tolist() == [[1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0]]
    # ratio counts only the two rows that carry text: 3 padded of 8
    assert padding["text"] == pytest.approx(3 / 8)
    assert "audio" not in padding


def test_single_modality_config_feeds_only_its_inputs() -> None:
    config = make_config(text={"max_tokens": 8})
    feeds, _ = collate([DecodedRow(text_ids=np.array([1, 2]))], config)
    assert list(feeds) == ["text_ids", "text_attention", "text_mask"]


def test_wrong_image_size_is_an_internal_error() -> None:
    with pytest.raises(InternalError, match="row 0"):
        collate([DecodedRow(image=np.zeros((2, 2, 3), np.uint8))], TRIMODAL)


def test_empty_batch_is_refused() -> None:
    with pytest.raises(InternalError):
        collate([], TRIMODAL)


def test_split_outputs_gives_each_row_its_own_slice() -> None:
    logits = np.arange(12, dtype=np.float32).reshape(4, 3)
    emb = np.arange(8, dtype=np.float32).reshape(4, 2)
    rows = split_outputs({"class_logits": logits, "emb": emb}, 4)
    assert len(rows) == 4
    assert rows[2]["class_logits"].tolist() == [6, 7, 8]
    assert rows[3]["emb"].tolist() == [6, 7]


def test_split_outputs_refuses_a_wrong_row_count() -> None:
    with pytest.raises(InternalError, match="model returned 3 rows for a batch of 4"):
        split_outputs({"class_logits": np.zeros((3, 2), np.float32)}, 4)
    with pytest.raises(InternalError, match="0 rows"):
        split_outputs({"class_logits": np.float32(1.0) * np.ones(())}, 1)
