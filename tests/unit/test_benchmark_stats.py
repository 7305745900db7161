"""The benchmarks' verdicts: a difference is called only when its interval leaves zero out."""

from __future__ import annotations

import pytest

from benchmarks.protocols import compare
from benchmarks.serving import LoadResult
from benchmarks.stats import median_interval


def test_consistent_difference_is_called() -> None:
    slower = median_interval([0.20, 0.25, 0.18, 0.22, 0.30, 0.21, 0.19, 0.24])
    assert slower.low > 0
    assert slower.verdict(lower_is_better=True) == "behind"
    assert slower.verdict(lower_is_better=False) == "ahead"


def test_difference_that_flips_sign_is_a_tie() -> None:
    noise = median_interval([0.3, -0.2, 0.1, -0.4, 0.2, -0.1, 0.05, -0.3])
    assert noise.low < 0 < noise.high
    assert noise.verdict(lower_is_better=True) == "tied"


def test_interval_is_reproducible_and_contains_the_median() -> None:
    values = [0.5, -1.0, 2.0, 0.1, 0.3, -0.2, 0.9]
    first, second = median_interval(values), median_interval(values)
    assert first == second
    assert first.low <= first.median <= first.high


def test_too_few_rounds_are_not_called() -> None:
    """Two rounds of one sign bound a bootstrap interval that leaves zero out: no call on that."""
    assert median_interval([0.08, 0.09]).verdict(lower_is_better=False) == "too few rounds to tell"


def test_no_rounds_is_an_error() -> None:
    with pytest.raises(ValueError, match="no rounds"):
        median_interval([])


def _round(door: str, level: int, rps: float, p50: float) -> LoadResult:
    return LoadResult(
        setup=door, concurrency=level, rps=rps, p50_ms=p50, p95_ms=p50, p99_ms=p50, errors=0, mean_batch=1.0
    )


def test_compare_reports_each_check_with_its_verdict() -> None:
    rounds = {
        ("grpc", 1): [_round("grpc", 1, 400 + i, 2.0 + 0.01 * i) for i in range(10)],
        ("http", 1): [_round("http", 1, 390 + i, 2.3 + 0.01 * i) for i in range(10)],
        ("grpc", 64): [_round("grpc", 64, 700 + (-1) ** i * 20, 80.0) for i in range(10)],
        ("http", 64): [_round("http", 64, 700 + (-1) ** (i + 1) * 20, 80.0) for i in range(10)],
    }
    line = compare(rounds, "grpc", "http")
    assert "p50 at c=1 -0.300 ms" in line
    assert "ahead (not slower in 10/10)" in line
    # Throughput alternates which door is ahead: a tie, not a win.
    assert "at c=64" in line and "tied (not lower in 5/10)" in line
