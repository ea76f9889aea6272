"""Significance of a difference between two models evaluated on the same users."""

from __future__ import annotations

import numpy as np
from scipy import stats


def paired_test(a: np.ndarray, b: np.ndarray, test: str = "wilcoxon") -> float:
    """Two-sided p-value of the per-user difference a - b (paired t-test or Wilcoxon signed-rank).
    Returns 1.0 where the two are identical (no evidence of any difference)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise ValueError(f"paired test needs aligned vectors, got {a.shape} and {b.shape}")
    diff = a - b
    if not np.any(diff):
        return 1.0
    if test == "ttest":
        return float(stats.ttest_rel(a, b).pvalue)
    if test == "wilcoxon":
        return float(stats.wilcoxon(a, b, zero_method="wilcox").pvalue)
    raise ValueError(f"unknown test {test!r}: use 'ttest' or 'wilcoxon'")


def bootstrap_ci(values: np.ndarray, level: float = 0.95, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean over users."""
    values = np.asarray(values, float)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n, len(values)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)
