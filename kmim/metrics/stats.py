"""Statistics for the studies (pure functions over numbers): correlations with bootstrap confidence intervals and
the binomial standard error of a top-1."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """r = cov(x, y) / (sd(x) sd(y)); NaN when either is constant or there are fewer than 2 points."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(pearsonr(x, y).statistic)


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Pearson correlation of the ranks (ties get their mean rank); NaN as for `pearson`."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def bootstrap_ci(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    stat: Callable[[np.ndarray, np.ndarray], float],
    *,
    n: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of stat(x, y): resample the (x_i, y_i) pairs with replacement n times and take
    the (1 - level) / 2 and (1 + level) / 2 quantiles of the finite values."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n, len(x)))
    vals = np.array([stat(x[i], y[i]) for i in idx])
    vals = vals[np.isfinite(vals)]
    if len(vals) == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(vals, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def binomial_se(top1_percent: float, n: int) -> float:
    """Standard error (in points) of a top-1 measured on n test images: 100 * sqrt(p (1 - p) / n)."""
    p = top1_percent / 100
    return 100 * math.sqrt(max(p * (1 - p), 0.0) / n)
