"""Study statistics on hand-made numbers."""

import math

import numpy as np
import pytest

from kmim.metrics.stats import binomial_se, bootstrap_ci, pearson, spearman


def test_correlations_by_hand():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # ranks of y = (1, 3, 2): Spearman = 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 2 / 24 = 0.5
    assert spearman([1, 2, 3], [10, 30, 20]) == pytest.approx(0.5)
    assert spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)  # monotone, not linear
    assert pearson([1, 2, 3, 4], [1, 4, 9, 16]) < 1.0
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_bootstrap_interval_covers_a_strong_and_excludes_zero():
    rng = np.random.default_rng(1)
    x = np.arange(30, dtype=float)
    y = -2 * x + rng.normal(0, 3, 30)
    lo, hi = bootstrap_ci(x, y, spearman, n=500)
    assert -1.0 <= lo < hi < 0 and lo < spearman(x, y) < hi
    assert bootstrap_ci(x, y, spearman, n=500) == (lo, hi)  # seeded
    lo0, hi0 = bootstrap_ci(x, rng.normal(size=30), spearman, n=500)
    assert lo0 < 0 < hi0  # no relation: the interval straddles 0


def test_binomial_se():
    assert binomial_se(50.0, 100) == pytest.approx(5.0)
    assert binomial_se(90.0, 1000) == pytest.approx(100 * math.sqrt(0.09 / 1000))
