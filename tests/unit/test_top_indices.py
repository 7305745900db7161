"""The answer's top-k, sorted in Python for small outputs: the same order numpy's stable sort gives."""

from __future__ import annotations

import numpy as np
import pytest

from fusionserve.service.model.outputs import PYTHON_SORT_MAX, top_indices


def _numpy_order(values: np.ndarray, k: int) -> list[int]:
    return [int(i) for i in np.argsort(-values, kind="stable")[:k]]


@pytest.mark.parametrize("size", [1, 2, 10, PYTHON_SORT_MAX, PYTHON_SORT_MAX + 1, 300])
def test_matches_numpy_stable_order_on_random_values_with_ties(size: int) -> None:
    rng = np.random.default_rng(size)
    for _ in range(50):
        values = rng.integers(0, 4, size).astype(np.float32)  # many ties
        for k in (1, 3, size):
            assert top_indices(values, k) == _numpy_order(values, k)


def test_nan_sorts_last_and_after_minus_infinity() -> None:
    values = np.array([np.nan, -np.inf, 0.5, np.nan, 0.5, -np.inf], dtype=np.float32)
    assert top_indices(values, 6) == [2, 4, 1, 5, 0, 3] == _numpy_order(values, 6)


def test_integer_outputs_and_k_past_the_width() -> None:
    values = np.array([3, 9, 9, 1], dtype=np.int64)
    assert top_indices(values, 10) == [1, 2, 0, 3]
    assert all(isinstance(i, int) for i in top_indices(values, 2))
