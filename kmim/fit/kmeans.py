"""K-means with faiss (Lloyd, k-means++ seeding) over a seeded sample of patch features."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import torch
from sklearn.cluster import kmeans_plusplus
from torch.utils.data import Dataset, Subset
from tqdm import tqdm

from kmim.config import TokenizerConfig
from kmim.data import make_loader
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


SEED_POINTS_PER_CENTROID = 64  # k-means++ seeds on at most k * this many of the sample's points


def kmeans_pp_start(sample: np.ndarray, k: int, seed: int, progress: bool) -> np.ndarray:
    """k-means++ centroids (K, D) from a seeded subset of at most k * SEED_POINTS_PER_CENTROID sample rows.

    Seeding is sequential and reads every point once per centroid (O(N K D)); Lloyd then refines on the whole
    sample, so seeding on a subset keeps the fit fast at large K and D without costing inertia (benchmarks.md)."""
    idx = subsample(len(sample), k, SEED_POINTS_PER_CENTROID, seed)
    pts = sample if idx is None else sample[idx]
    if progress:
        tqdm.write(f"k-means++ seeding: K={k} on {len(pts):,} of the {len(sample):,} sample points")
    return kmeans_plusplus(pts, k, random_state=seed)[0]


def fit_kmeans(
    x: np.ndarray,
    k: int,
    niter: int = 20,
    seed: int = 0,
    max_points_per_centroid: int = 1024,
    init: str = "kmeans++",
    progress: bool = True,
) -> KMeansResult:
    """Lloyd K-means with faiss on x (N, D), on a seeded subsample of at most k * max_points_per_centroid rows.

    faiss runs one iteration per call, warm-started from the previous centroids, so a progress bar can show the
    inertia after each iteration; faiss re-seeds empty clusters by splitting large ones. `init` is "kmeans++"
    (scikit-learn's seeding, which avoids the bad local optima of random init, on a subset: `kmeans_pp_start`) or
    "random" (faiss's default).
    """
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
    start = kmeans_pp_start(sample, k, seed, progress) if init == "kmeans++" else None
    for it in bar:
        km.train(sample, init_centroids=start if it == 0 else km.centroids)
        bar.set_postfix(inertia=f"{km.obj[-1] / len(sample):.4g}")
    dist, ids = km.index.search(sample, 1)
    counts = np.bincount(ids[:, 0], minlength=k)
    return KMeansResult(km.centroids.copy(), float(dist.mean()), len(sample), counts)


def sample_patches(
    ds: Dataset, feature_fn: Callable[[torch.Tensor], torch.Tensor], cap: int, seed: int, batch_size: int = 256,
    progress: bool = True,
) -> np.ndarray:  # fmt: skip
    """A seeded sample of about 2 * cap patch vectors, drawn evenly over all images of `ds` (N, D) float32.

    feature_fn maps a batch of images (B, C, H, W) to per-patch vectors (B, L, D). The draw does not depend on
    the batch size (one uniform number per patch, in dataset order).
    """
    n_img = len(ds)
    rng = np.random.default_rng(seed)
    out = []
    for imgs, _ in tqdm(make_loader(ds, batch_size, shuffle=False), desc="collecting patches", disable=not progress):
        x = feature_fn(imgs)  # (B, L, D)
        per_img = min(x.shape[1], math.ceil(2 * cap / n_img))
        pick = np.argsort(rng.random((x.shape[0], x.shape[1])), axis=1)[:, :per_img]  # (B, per_img)
        out.append(torch.gather(x, 1, torch.from_numpy(pick)[..., None].expand(-1, -1, x.shape[2])).flatten(0, 1))
    return torch.cat(out).numpy().astype(np.float32)


def fit_subset(ds: Dataset, n: int, seed: int) -> Dataset:
    """A seeded subset of n images of ds (all of it when n is 0 or at least len(ds))."""
    if n == 0 or n >= len(ds):
        return ds
    idx = np.sort(np.random.default_rng(seed).choice(len(ds), size=n, replace=False))
    return Subset(ds, idx.tolist())


def kmeans_fit_meta(cfg: TokenizerConfig, res: KMeansResult) -> dict[str, Any]:
    """Fit statistics recorded in meta['fit'] by every K-means tokenizer."""
    return {
        "inertia": res.inertia,
        "n_fit": res.n_fit,
        "niter": cfg.niter,
        "init": cfg.init,
        "seed": cfg.seed,
        "max_points_per_centroid": cfg.max_points_per_centroid,
        "used_codes": int((res.counts > 0).sum()),
    }


def fit_patch_kmeans(
    cfg: TokenizerConfig, ds: Dataset, feature_fn: Callable[[torch.Tensor], torch.Tensor], progress: bool
) -> tuple[torch.Tensor, dict[str, Any]]:
    """K-means centroids (K, D) over a seeded sample of patch features of a seeded subset of `tokenizer.fit_images`
    images of ds, and the fit statistics for meta['fit']."""
    sub = fit_subset(ds, cfg.fit_images, cfg.seed)
    with torch.no_grad():
        x = sample_patches(sub, feature_fn, cfg.k * cfg.max_points_per_centroid, cfg.seed, cfg.batch_size, progress)
    res = fit_kmeans(x, cfg.k, cfg.niter, cfg.seed, cfg.max_points_per_centroid, cfg.init, progress)
    return torch.from_numpy(res.centroids), {**kmeans_fit_meta(cfg, res), "fit_images": len(sub)}
