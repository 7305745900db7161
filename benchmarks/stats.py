"""How sure a benchmark comparison is: paired rounds, a median and its 95 % interval.

On a shared machine the speed of the host drifts by more than the
difference between two setups, so the benchmarks run the setups in turns
and compare rounds that ran back to back. A difference is only called one
when the bootstrap interval of the median per-round difference leaves zero
out; otherwise the two are reported as tied, with the interval, so a reader
sees how small a difference the run could have detected. Fewer than
``MIN_ROUNDS`` rounds get no call at all.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

#: Fewest paired rounds on which a difference is called at all.
MIN_ROUNDS = 6


@dataclass(frozen=True)
class Interval:
    """The median of paired differences and its bootstrap confidence interval."""

    median: float
    low: float
    high: float
    rounds: int = MIN_ROUNDS

    def verdict(self, lower_is_better: bool) -> str:
        """``ahead``/``behind`` when the interval leaves 0 out, else ``tied``.

        Below ``MIN_ROUNDS`` the bootstrap cannot leave zero out honestly (two
        rounds of the same sign give an interval between them), so no call is made.
        """
        if self.rounds < MIN_ROUNDS:
            return "too few rounds to tell"
        if self.low > 0:
            return "behind" if lower_is_better else "ahead"
        if self.high < 0:
            return "ahead" if lower_is_better else "behind"
        return "tied"

    def as_gain(self) -> str:
        """A relative gain (higher is better) as ``+1.9% [-0.9%, +7.4%] tied``."""
        return f"{self.median:+.1%} [{self.low:+.1%}, {self.high:+.1%}] {self.verdict(lower_is_better=False)}"


def relative_gains(values: Sequence[float], baselines: Sequence[float]) -> list[float]:
    """Per-round gain of ``values`` over ``baselines`` (rounds paired in time; a zero baseline is skipped)."""
    return [value / base - 1 for value, base in zip(values, baselines, strict=True) if base]


def median_interval(
    differences: Sequence[float], confidence: float = 0.95, resamples: int = 4000, seed: int = 0
) -> Interval:
    """Percentile bootstrap of the median of ``differences`` (seeded: the same data, the same answer)."""
    if not differences:
        raise ValueError("no rounds to compare")
    values = list(differences)
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    tail = (1 - confidence) / 2
    low = medians[int(tail * (resamples - 1))]
    high = medians[int((1 - tail) * (resamples - 1))]
    return Interval(median=statistics.median(values), low=low, high=high, rounds=len(values))
