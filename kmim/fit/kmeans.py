"""K-means with faiss (Lloyd, k-means++ seeding) over a seeded sample of patch features."""

from __future__ import annotations

import math
from collections.abc import Callable, Sized
from dataclasses import dataclass
from typing import Any, cast

import faiss
import numpy as np
import torch
from sklearn.cluster import kmeans_plusplus
from torch.utils.data import Dataset, Subset
from tqdm import tqdm

from kmim.config import TokenizerConfig
from kmim.data import make_loader
from kmim.dist import broadcast_object, gather_in_order, on_main
from kmim.errors import KmimError
from kmim.progress import progress_bar


@dataclass
class KMeansResult:
    centroids: np.ndarray  # (K, D) float32
    inertia: float  # mean squared distance of the fitted sample to its nearest centroid
    n_fit: int  # number of vectors the centroids were fitted on
    counts: np.ndarray  # (K,) vectors per centroid in the fitted sample


def subsample(n: int, k: int, max_points_per_centroid: int, *, seed: int) -> np.ndarray | None:
    """Indices of a seeded random subset of size k * max_points_per_centroid (faiss's rule), or None to keep all."""
    cap = k * max_points_per_centroid
    if n <= cap:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


SEED_POINTS_PER_CENTROID = 64  # k-means++ seeds on at most k * this many of the sample's points


def kmeans_pp_start(sample: np.ndarray, k: int, seed: int, *, progress: bool) -> np.ndarray:
    """k-means++ centroids (K, D) from a seeded subset of at most k * SEED_POINTS_PER_CENTROID sample rows.

    Seeding is sequential and reads every point once per centroid (O(N K D)); Lloyd then refines on the whole
    sample, so seeding on a subset keeps the fit fast at large K and D without costing inertia (benchmarks.md)."""
    idx = subsample(len(sample), k, SEED_POINTS_PER_CENTROID, seed=seed)
    pts = sample if idx is None else sample[idx]
    if progress:
        tqdm.write(f"k-means++ seeding: K={k} on {len(pts):,} of the {len(sample):,} sample points")
    return cast(np.ndarray, kmeans_plusplus(pts, k, random_state=seed)[0])


def check_enough(n: int, k: int) -> None:
    if n < k:
        raise KmimError(f"K-means needs at least K={k} vectors to fit, got {n}: lower tokenizer.k or use more data")


def fit_kmeans(
    x: np.ndarray,
    k: int,
    niter: int = 20,
    *,
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
    check_enough(n, k)
    idx = subsample(n, k, max_points_per_centroid, seed=seed)
    sample = np.ascontiguousarray(x if idx is None else x[idx], dtype=np.float32)
    if len(sample) < 39 * k:  # faiss's own threshold; it would warn on every iteration
        tqdm.write(f"note: K-means with K={k} on only {len(sample)} vectors (< 39 per centroid): noisy centroids")
    ppc = max(len(sample) // k + 1, 1)
    km = faiss.Kmeans(d, k, niter=1, seed=seed, max_points_per_centroid=ppc, min_points_per_centroid=1, verbose=False)
    bar = progress_bar(range(niter), desc=f"k-means K={k} on {len(sample):,}x{d}", disable=not progress, leave=False)
    start = kmeans_pp_start(sample, k, seed, progress=progress) if init == "kmeans++" else None
    for it in bar:
        km.train(sample, init_centroids=start if it == 0 else km.centroids)
        bar.set_postfix(inertia=f"{cast(np.ndarray, km.obj)[-1] / len(sample):.4g}")
    dist, ids = km.index.search(sample, 1)
    counts = np.bincount(ids[:, 0], minlength=k)
    return KMeansResult(cast(np.ndarray, km.centroids).copy(), float(dist.mean()), len(sample), counts)


def patch_draw(seed: int, position: int, num_patches: int) -> np.ndarray:
    """The uniform numbers (L,) that rank the patches of the image at `position` of the fit's image list: row
    `position` of one stream default_rng(seed).random((N, L)), reached by advancing the generator, so the draw of
    an image depends on the seed and its position only (not on the process, worker or batch that reads it)."""
    bits = np.random.PCG64(seed)
    bits.advance(position * num_patches)  # one 64-bit output per float64
    return np.random.Generator(bits).random(num_patches)


class _WithPosition(Dataset[tuple[torch.Tensor, int]]):
    """(image, position in the fit's image list) for the images `positions` of ds."""

    def __init__(self, ds: Dataset[Any], positions: list[int]) -> None:
        self.ds, self.positions = ds, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.ds[self.positions[i]][0], self.positions[i]


def sample_patches(
    ds: Dataset[Any],
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    cap: int,
    *,
    seed: int,
    batch_size: int = 256,
    progress: bool = True,
    rank: int = 0,
    world: int = 1,
    num_workers: int = 0,
) -> np.ndarray:
    """A seeded sample of about 2 * cap patch vectors, drawn evenly over all images of `ds` (N, D) float32.

    feature_fn maps a batch of images (B, C, H, W) to per-patch vectors (B, L, D). Each image keeps the patches
    ranked first by `patch_draw`, so the sample depends on the seed alone: process `rank` of `world` reads every
    world-th image (with `num_workers` DataLoader workers) and the rows are gathered back in image order, giving
    every process the same sample as one process reading everything.
    """
    n_img = len(cast(Sized, ds))
    positions = list(range(rank, n_img, world))
    loader = make_loader(_WithPosition(ds, positions), batch_size, shuffle=False, num_workers=num_workers)
    desc = "collecting patches" + (f" (rank {rank} of {world}: {len(positions):,} images)" if world > 1 else "")
    out, seen = [], []
    for imgs, pos in progress_bar(loader, desc=desc, disable=not progress, unit="batch"):
        x = feature_fn(imgs)  # (B, L, D)
        per_img = min(x.shape[1], math.ceil(2 * cap / n_img))
        pick = np.stack([np.argsort(patch_draw(seed, int(p), x.shape[1]))[:per_img] for p in pos])  # (B, per_img)
        out.append(torch.gather(x, 1, torch.from_numpy(pick)[..., None].expand(-1, -1, x.shape[2])))
        seen.append(pos)
    rows = gather_in_order(torch.cat(out), torch.cat(seen), n_img, world=world)  # (N, per_img, D) in image order
    return rows.flatten(0, 1).numpy().astype(np.float32)


def fit_subset(ds: Dataset[Any], n: int, seed: int) -> Dataset[Any]:
    """A seeded subset of n images of ds (all of it when n is 0 or at least len(ds))."""
    if n == 0 or n >= len(cast(Sized, ds)):
        return ds
    idx = np.sort(np.random.default_rng(seed).choice(len(cast(Sized, ds)), size=n, replace=False))
    return Subset(ds, idx.tolist())


def kmeans_fit_meta(cfg: TokenizerConfig, res: KMeansResult) -> dict[str, Any]:
    """Fit statistics recorded in meta.fit by every K-means tokenizer."""
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
    cfg: TokenizerConfig,
    ds: Dataset[Any],
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    progress: bool,
    rank: int = 0,
    world: int = 1,
    num_workers: int = 0,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """K-means centroids (K, D) over a seeded sample of patch features of a seeded subset of `tokenizer.fit_images`
    images of ds, and the fit statistics for meta.fit. With world > 1 every process reads its share of the
    images (`sample_patches`), rank 0 runs K-means and sends the result, so all processes return the same."""
    sub = fit_subset(ds, cfg.fit_images, cfg.seed)
    cap = cfg.k * cfg.max_points_per_centroid
    with torch.no_grad():
        x = sample_patches(
            sub,
            feature_fn,
            cap,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            progress=progress,
            rank=rank,
            world=world,
            num_workers=num_workers,
        )
    check_enough(len(x), cfg.k)  # on every process (each holds the whole sample) before rank 0 alone goes on

    def run() -> tuple[torch.Tensor, dict[str, Any]]:
        res = fit_kmeans(
            x,
            cfg.k,
            cfg.niter,
            seed=cfg.seed,
            max_points_per_centroid=cfg.max_points_per_centroid,
            init=cfg.init,
            progress=progress,
        )
        return torch.from_numpy(res.centroids), {**kmeans_fit_meta(cfg, res), "fit_images": len(cast(Sized, sub))}

    return broadcast_object(on_main(run)) if world > 1 else run()
