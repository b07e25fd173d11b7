import numpy as np
import pytest

from kmim.errors import KmimError
from kmim.fit.kmeans import fit_kmeans, subsample


def test_fit_kmeans_recovers_separated_clusters():
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [8, 8], [0, 8]], dtype=np.float32)
    x = np.concatenate([rng.normal(c, 0.1, (200, 2)) for c in centers]).astype(np.float32)
    res = fit_kmeans(x, 3, niter=10, seed=0, progress=False)
    found = res.centroids[np.argsort(res.centroids[:, 0] * 100 + res.centroids[:, 1])]
    expect = centers[np.argsort(centers[:, 0] * 100 + centers[:, 1])]
    assert np.allclose(found, expect, atol=0.05)
    assert sorted(res.counts.tolist()) == [200, 200, 200]
    assert res.inertia < 0.05  # about 2 * 0.1^2


def test_fit_kmeans_subsamples_by_points_per_centroid():
    assert subsample(100, 4, 256, seed=0) is None
    idx = subsample(10_000, 4, 100, seed=0)
    assert len(idx) == 400 and len(set(idx.tolist())) == 400
    assert np.array_equal(idx, subsample(10_000, 4, 100, seed=0))  # seeded


def test_fit_kmeans_needs_k_points():
    with pytest.raises(KmimError, match="at least K=5"):
        fit_kmeans(np.zeros((3, 2), np.float32), 5, progress=False)
