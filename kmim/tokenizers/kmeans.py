"""K-means with faiss (fit) and nearest-centroid assignment in torch (encode, on the model's device)."""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import torch
from sklearn.cluster import kmeans_plusplus
from tqdm.auto import tqdm

from kmim.errors import KmimError


@dataclass
class KMeansResult:
    centroids: np.ndarray  # (K, D) float32
    inertia: float  # mean squared distance of the fitted sample to its nearest centroid
    n_fit: int  # number of vectors the centroids were fitted on
    counts: np.ndarray  # (K,) vectors per centroid in the fitted sample


def subsample(n: int, k: int, max_points_per_centroid: int, seed: int) -> np.ndarray | None:
    """Indices of a seeded random subset of size k * max_points_per_centroid (faiss's rule), or None to keep all."""
    cap = k * max_points_per_centroid
    if n <= cap:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


def fit_kmeans(
    x: np.ndarray,
    k: int,
    niter: int = 20,
    seed: int = 0,
    max_points_per_centroid: int = 256,
    init: str = "kmeans++",
    progress: bool = True,
) -> KMeansResult:
    """Lloyd K-means with faiss on x (N, D), on a seeded subsample of at most k * max_points_per_centroid rows.

    faiss runs one iteration per call, warm-started from the previous centroids, so a progress bar can show the
    inertia after each iteration; faiss re-seeds empty clusters by splitting large ones. `init` is "kmeans++"
    (scikit-learn's seeding, which avoids the bad local optima of random init) or "random" (faiss's default).
    """
    if init not in ("kmeans++", "random"):
        raise KmimError(f"tokenizer.init={init!r} is not valid: use 'kmeans++' or 'random'")
    n, d = x.shape
    if n < k:
        raise KmimError(f"K-means needs at least K={k} vectors to fit, got {n}: lower tokenizer.k or use more data")
    idx = subsample(n, k, max_points_per_centroid, seed)
    sample = np.ascontiguousarray(x if idx is None else x[idx], dtype=np.float32)
    if len(sample) < 39 * k:  # faiss's own threshold; it would warn on every iteration
        tqdm.write(f"note: K-means with K={k} on only {len(sample)} vectors (< 39 per centroid): noisy centroids")
    ppc = max(len(sample) // k + 1, 1)
    km = faiss.Kmeans(d, k, niter=1, seed=seed, max_points_per_centroid=ppc, min_points_per_centroid=1, verbose=False)
    bar = tqdm(range(niter), desc=f"k-means K={k} on {len(sample):,}x{d}", disable=not progress, leave=False)
    start = kmeans_plusplus(sample, k, random_state=seed)[0] if init == "kmeans++" else None
    for it in bar:
        km.train(sample, init_centroids=start if it == 0 else km.centroids)
        bar.set_postfix(inertia=f"{km.obj[-1] / len(sample):.4g}")
    dist, ids = km.index.search(sample, 1)
    counts = np.bincount(ids[:, 0], minlength=k)
    return KMeansResult(km.centroids.copy(), float(dist.mean()), len(sample), counts)


@torch.no_grad()
def assign(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Nearest centroid in squared Euclidean distance: x (N, D), centroids (K, D) -> ids (N,) int64.

    d(x, c) = ||x||^2 - 2 x.c + ||c||^2; ||x||^2 is constant per row and is dropped before the argmin.
    Ties go to the lowest index.
    """
    c_sq = (centroids * centroids).sum(dim=1)  # (K,)
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for s in range(0, x.shape[0], chunk):
        xs = x[s : s + chunk]
        out[s : s + chunk] = (c_sq - 2.0 * xs @ centroids.T).argmin(dim=1)  # (n, K) -> (n,)
    return out
