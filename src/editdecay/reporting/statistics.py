"""Statistics for the study's claims (docs/algorithms.md §15): bootstrap intervals, exact tests, verdicts.

Plain functions of numbers. Units are clustered by replicate (one seed: an edit sample and a fine-tuning seed):
the bootstrap resamples replicates, then units within each drawn replicate, both with replacement (two levels,
so the interval reflects seed-to-seed variation as well as edit-to-edit variation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Verdict = Literal["replicates", "contradicts", "inconclusive"]
Direction = Literal["greater", "less"]


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    level: float = 0.95


def bootstrap_mean(
    clusters: Sequence[Sequence[float]], *, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> Interval:
    """Mean of all units and its percentile interval under the two-level (replicate, unit) bootstrap.

    `clusters`: one sequence of unit values (e.g. per-edit differences s_i^a - s_i^b) per replicate. A single
    replicate resamples units only.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    means = bootstrap_draws(clusters, resamples, seed)
    estimate = float(np.concatenate([np.asarray(c, dtype=float) for c in clusters]).mean())
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Interval(estimate, float(low), float(high), level)


def bootstrap_difference(
    a: Sequence[Sequence[float]],
    b: Sequence[Sequence[float]],
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """mean(a) - mean(b) for unpaired samples (different items), each resampled within its own replicates."""
    first = bootstrap_draws(a, resamples, seed)
    second = bootstrap_draws(b, resamples, seed + 1)
    alpha = (1 - level) / 2
    low, high = np.quantile(first - second, [alpha, 1 - alpha])
    estimate = float(np.concatenate([np.asarray(c, float) for c in a]).mean()) - float(
        np.concatenate([np.asarray(c, float) for c in b]).mean()
    )
    return Interval(estimate, float(low), float(high), level)


def bootstrap_draws(clusters: Sequence[Sequence[float]], resamples: int, seed: int) -> np.ndarray:
    """`resamples` two-level bootstrap means of `clusters` (see bootstrap_mean)."""
    groups = [np.asarray(c, dtype=float) for c in clusters if len(c)]
    if not groups:
        raise ValueError("bootstrap needs at least one non-empty cluster.")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for r in range(resamples):
        chosen = rng.integers(0, len(groups), size=len(groups)) if len(groups) > 1 else [0]
        draws = [groups[g][rng.integers(0, len(groups[g]), size=len(groups[g]))] for g in chosen]
        means[r] = np.concatenate(draws).mean()
    return means


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for discordant counts b (1 -> 0) and c (0 -> 1): under H0 each discordant
    pair is either kind with probability 1/2, so p = min(1, 2 P(X <= min(b, c))), X ~ Binomial(b + c, 1/2)."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b}, {c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def binomial_test(successes: int, n: int, p: float = 0.5) -> float:
    """Two-sided exact binomial p-value: the total probability of outcomes no more likely than the observed."""
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 1.0
    probs = [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
    observed = probs[successes]
    return min(1.0, sum(q for q in probs if q <= observed * (1 + 1e-9)))


def fisher_exact(table: Sequence[Sequence[int]]) -> float:
    """Two-sided Fisher exact p-value of a 2x2 table [[a, b], [c, d]]: the hypergeometric probability of every
    table with the same margins that is no more likely than the observed one."""
    (a, b), (c, d) = table
    if min(a, b, c, d) < 0:
        raise ValueError(f"counts must be >= 0, got {table}")
    row1, col1, n = a + b, a + c, a + b + c + d
    if n == 0:
        return 1.0

    def prob(x: int) -> float:
        return math.comb(row1, x) * math.comb(n - row1, col1 - x) / math.comb(n, col1)

    support = range(max(0, col1 + row1 - n), min(row1, col1) + 1)
    observed = prob(a)
    return min(1.0, sum(q for x in support if (q := prob(x)) <= observed * (1 + 1e-9)))


def verdict(interval: Interval, direction: Direction, *, margin: float = 0.0) -> Verdict:
    """`replicates` when the interval excludes `margin` on the study's side, `contradicts` when it excludes it on
    the other side, `inconclusive` otherwise (docs/algorithms.md §15)."""
    above, below = interval.low > margin, interval.high < margin
    if direction == "greater":
        return "replicates" if above else "contradicts" if below else "inconclusive"
    return "replicates" if below else "contradicts" if above else "inconclusive"
