"""Triton's classification extension: counts checked up front, entries formatted as Triton does."""

from __future__ import annotations

import numpy as np
import pytest

from fusionserve.service.errors import InvalidInput
from fusionserve.service.v2.classification import classify, requested_counts
from fusionserve.service.v2.codec import RequestedOutput, Tensor

DATATYPES = {"probabilities": "FP32", "labels": "BYTES", "scores": "FP32"}


def _probabilities(rows: list[list[float]]) -> Tensor:
    data = np.asarray(rows, dtype=np.float32)
    return Tensor("probabilities", "FP32", data.shape, data)


def test_counts_of_the_outputs_that_ask() -> None:
    requested = [
        RequestedOutput("probabilities", {"classification": 3, "binary_data": True}),
        RequestedOutput("scores"),
    ]
    assert requested_counts(requested, DATATYPES) == {"probabilities": 3}


@pytest.mark.parametrize("count", [0, -2, True, 1.5, "3", None])
def test_count_must_be_a_positive_integer(count: object) -> None:
    with pytest.raises(InvalidInput, match="positive integer"):
        requested_counts([RequestedOutput("probabilities", {"classification": count})], DATATYPES)


def test_bytes_outputs_cannot_be_classified() -> None:
    with pytest.raises(InvalidInput, match="numeric output"):
        requested_counts([RequestedOutput("labels", {"classification": 1})], DATATYPES)


def test_entries_are_value_index_label_best_first() -> None:
    tensor = _probabilities([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])
    classes = classify(tensor, 2, ["cat", "dog", "bird"])
    assert classes.datatype == "BYTES" and classes.shape == (2, 2)
    assert classes.data.tolist() == [
        [b"0.600000:1:dog", b"0.300000:2:bird"],
        [b"0.500000:0:cat", b"0.300000:2:bird"],
    ]


def test_without_labels_ties_and_wide_counts() -> None:
    classes = classify(_probabilities([[0.25, 0.5, 0.25]]), 10, None)
    # The whole row when the count is wider; equal values keep the lower index first.
    assert classes.data.tolist() == [[b"0.500000:1", b"0.250000:0", b"0.250000:2"]]
