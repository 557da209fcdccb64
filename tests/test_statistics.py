"""Statistics for claims (reporting/statistics.py) on tables with known answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from editdecay.reporting.statistics import (
    Interval,
    binomial_test,
    bootstrap_difference,
    bootstrap_mean,
    fisher_exact,
    mcnemar_exact,
    verdict,
)


def test_mcnemar_exact_on_a_known_table() -> None:
    # b = 10, c = 2: p = 2 * (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 158 / 4096
    assert mcnemar_exact(10, 2) == pytest.approx(158 / 4096)
    assert mcnemar_exact(2, 10) == mcnemar_exact(10, 2)
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(6, 0) == pytest.approx(2 / 64)


def test_mcnemar_is_the_two_sided_binomial_test_at_one_half() -> None:
    for b, c in [(7, 1), (3, 9), (12, 12), (0, 4)]:
        assert mcnemar_exact(b, c) == pytest.approx(binomial_test(b, b + c))


def test_binomial_test_on_known_values() -> None:
    assert binomial_test(9, 10) == pytest.approx(22 / 1024)
    assert binomial_test(5, 10) == pytest.approx(1.0)
    # Asymmetric p: the outcomes no more likely than 0 successes of 5 at p = 0.2 (P(0) = 0.32768).
    probs = [math.comb(5, k) * 0.2**k * 0.8 ** (5 - k) for k in range(6)]
    assert binomial_test(0, 5, 0.2) == pytest.approx(sum(q for q in probs if q <= probs[0]))


def _fisher_by_enumeration(a: int, b: int, c: int, d: int) -> float:
    """Every 0/1 labelling of the n items with the observed margins, counted directly (no formula)."""
    n, row1, col1 = a + b + c + d, a + b, a + c
    counts: dict[int, int] = {}
    for ones in itertools.combinations(range(n), col1):  # which items are in column 1
        x = sum(1 for i in ones if i < row1)  # of those, how many are in row 1
        counts[x] = counts.get(x, 0) + 1
    total = sum(counts.values())
    observed = counts[a]
    return sum(v for v in counts.values() if v <= observed) / total


@pytest.mark.parametrize("table", [(3, 1, 1, 3), (1, 9, 11, 3), (0, 5, 5, 0), (2, 2, 2, 2), (4, 0, 1, 6)])
def test_fisher_exact_matches_enumeration(table: tuple[int, int, int, int]) -> None:
    a, b, c, d = table
    assert fisher_exact([[a, b], [c, d]]) == pytest.approx(_fisher_by_enumeration(a, b, c, d))


def test_fisher_exact_on_the_tea_tasting_table() -> None:
    assert fisher_exact([[3, 1], [1, 3]]) == pytest.approx(34 / 70)


def test_bootstrap_interval_covers_a_planted_paired_difference() -> None:
    rng = np.random.default_rng(1)
    covered, excluded_zero = 0, 0
    for rep in range(40):
        # three seeds of 60 edits; per-edit differences with mean 0.2 and seed-level noise
        clusters = [rng.normal(0.2 + rng.normal(0, 0.02), 0.5, size=60) for _ in range(3)]
        interval = bootstrap_mean(clusters, resamples=400, seed=rep)
        covered += interval.low <= 0.2 <= interval.high
        excluded_zero += interval.low > 0
    assert covered >= 34  # nominal 95%: at least 85% of 40
    assert excluded_zero >= 36


def test_bootstrap_of_no_difference_is_centred_on_zero() -> None:
    interval = bootstrap_mean([[0.0] * 50, [0.0] * 50])
    assert (interval.estimate, interval.low, interval.high) == (0.0, 0.0, 0.0)
    assert verdict(interval, "greater") == "inconclusive"


def test_unpaired_difference_recovers_the_planted_gap() -> None:
    rng = np.random.default_rng(0)
    a = [rng.binomial(1, 0.4, size=200).astype(float) for _ in range(3)]
    b = [rng.binomial(1, 0.1, size=200).astype(float) for _ in range(3)]
    interval = bootstrap_difference(a, b)
    assert interval.low <= 0.3 <= interval.high
    assert interval.low > 0


@pytest.mark.parametrize(
    ("low", "high", "direction", "margin", "expected"),
    [
        (0.1, 0.3, "greater", 0.0, "replicates"),
        (-0.3, -0.1, "greater", 0.0, "contradicts"),
        (-0.1, 0.2, "greater", 0.0, "inconclusive"),
        (-0.3, -0.1, "less", 0.0, "replicates"),
        (0.05, 0.15, "less", 0.2, "replicates"),
        (0.25, 0.4, "less", 0.2, "contradicts"),
        (0.55, 0.7, "greater", 0.5, "replicates"),
        (0.3, 0.45, "greater", 0.5, "contradicts"),
    ],
)
def test_verdicts(low: float, high: float, direction, margin: float, expected: str) -> None:
    assert verdict(Interval((low + high) / 2, low, high), direction, margin=margin) == expected


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)
    with pytest.raises(ValueError):
        bootstrap_mean([])
    with pytest.raises(ValueError):
        binomial_test(5, 3)
