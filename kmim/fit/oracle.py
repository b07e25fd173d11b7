"""Fitting the reference tokenizers `class-wise`, `cross-class` (K-means within each class, from the labels) and
`random` (a seeded hash; nothing is learned). What each one is: kmim.tokenizers.oracle."""

from __future__ import annotations

import math
from collections.abc import Sized
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import Dataset

from kmim.config import TokenizerConfig
from kmim.data import make_loader
from kmim.errors import KmimError
from kmim.fit.data import FitData
from kmim.fit.kmeans import KMeansResult, fit_kmeans
from kmim.progress import progress_bar
from kmim.tokenizers.base import TokenizerMeta
from kmim.tokenizers.oracle import HASH_PRIME, QUANT_STEP, ClassWiseTokenizer, CrossClassTokenizer, RandomTokenizer
from kmim.tokenizers.sources import PixelSource


def sample_class_patches(
    ds: Dataset[Any], feature_fn: Any, cap_per_class: int, *, num_classes: int, seed: int, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded sample of patch vectors (N, D) float32 and their images' labels (N,), drawn evenly over the images,
    about 2 * cap_per_class per class for balanced classes."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    per_img = None
    for imgs, labels in progress_bar(
        make_loader(ds, 256, shuffle=False), desc="collecting patches", disable=not progress
    ):
        x = feature_fn(imgs)  # (B, P, D)
        per_img = per_img or min(x.shape[1], math.ceil(2 * cap_per_class * num_classes / len(cast(Sized, ds))))
        pick = np.argsort(rng.random(x.shape[:2]), axis=1)[:, :per_img]  # (B, per_img)
        idx = torch.from_numpy(pick)[..., None].expand(-1, -1, x.shape[2])
        xs.append(torch.gather(x, 1, idx).flatten(0, 1))
        ys.append(labels.long().repeat_interleave(per_img))
    return torch.cat(xs).numpy().astype(np.float32), torch.cat(ys).numpy()


def _fit_per_class(
    cfg: TokenizerConfig, x: np.ndarray, y: np.ndarray, *, num_classes: int, clusters: int, progress: bool
) -> tuple[torch.Tensor, list[KMeansResult]]:
    """K-means with `clusters` centroids on each class's patches: centroids (L, M, D) and the fit results."""
    cents, results = [], []
    for c in progress_bar(
        range(num_classes), desc=f"k-means per class (M={clusters})", disable=not progress, leave=False
    ):
        xc = x[y == c]
        if len(xc) < clusters:
            raise KmimError(
                f"class {c} has {len(xc)} sampled patches, fewer than the {clusters} clusters per class: "
                "lower tokenizer.k or use more images"
            )
        res = fit_kmeans(
            xc,
            clusters,
            cfg.niter,
            seed=cfg.seed,
            max_points_per_centroid=cfg.max_points_per_centroid,
            init=cfg.init,
            progress=False,
        )
        cents.append(torch.from_numpy(res.centroids))
        results.append(res)
    return torch.stack(cents), results


def _oracle_fit_meta(cfg: TokenizerConfig, results: list[KMeansResult]) -> dict[str, Any]:
    n_fit = sum(r.n_fit for r in results)
    return {
        "inertia": sum(r.inertia * r.n_fit for r in results) / n_fit,
        "n_fit": n_fit,
        "niter": cfg.niter,
        "init": cfg.init,
        "seed": cfg.seed,
        "max_points_per_centroid": cfg.max_points_per_centroid,
        "used_codes": int(sum((r.counts > 0).sum() for r in results)),
    }


def _fit_oracle(
    cfg: TokenizerConfig, data: FitData, clusters: int, *, k: int, progress: bool
) -> tuple[TokenizerMeta, torch.Tensor, list[KMeansResult]]:
    num_classes = len(data.info.classes)
    source = PixelSource(data.patch_size, data.info.channels, cfg.patch_norm)
    meta = data.meta(
        k,
        "pixels",
        source.dim,
        patch_norm=cfg.patch_norm,
        num_classes=num_classes,
        clusters_per_class=clusters,
        uses_labels=True,
    )
    cap = clusters * cfg.max_points_per_centroid
    x, y = sample_class_patches(data.ds, source, cap, num_classes=num_classes, seed=cfg.seed, progress=progress)
    cents, results = _fit_per_class(cfg, x, y, num_classes=num_classes, clusters=clusters, progress=progress)
    meta.stamp(_oracle_fit_meta(cfg, results))
    return meta, cents, results


def fit_class_wise(cfg: TokenizerConfig, data: FitData, progress: bool = True) -> ClassWiseTokenizer:
    """K-means within each class with K // L clusters (the codebook has L * (K // L) tokens)."""
    num_classes = len(data.info.classes)
    if cfg.k < num_classes:
        raise KmimError(f"tokenizer.k={cfg.k} is below the {num_classes} classes: class-wise needs K >= L")
    per_class = cfg.k // num_classes
    meta, cents, _ = _fit_oracle(cfg, data, per_class, k=per_class * num_classes, progress=progress)
    return ClassWiseTokenizer(meta, cents)


def size_ranks(counts: np.ndarray) -> np.ndarray:
    """ranks (L, K): ranks[l, j] = position of cluster j of class l when the class's clusters are sorted by
    decreasing size (ties by index), so 0 is the largest."""
    order = np.argsort(-counts, axis=1, kind="stable")  # (L, K)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(counts.shape[1])[None, :].repeat(len(counts), 0), axis=1)
    return ranks


def fit_cross_class(cfg: TokenizerConfig, data: FitData, progress: bool = True) -> CrossClassTokenizer:
    """K-means with K clusters within each class; token = the cluster's size rank within its class."""
    meta, cents, results = _fit_oracle(cfg, data, cfg.k, k=cfg.k, progress=progress)
    ranks = size_ranks(np.stack([r.counts for r in results]))  # (L, K)
    return CrossClassTokenizer(meta, cents, torch.from_numpy(ranks))


def fit_random(cfg: TokenizerConfig, data: FitData, progress: bool = True) -> RandomTokenizer:
    """Draw the hash parameters from tokenizer.seed; nothing is learned from the data."""
    dim = data.patch_size**2 * data.info.channels
    meta = data.meta(cfg.k, "pixels", dim, patch_norm=cfg.patch_norm, quant_step=QUANT_STEP)
    meta.stamp({"seed": cfg.seed, "hash_prime": HASH_PRIME})
    g = torch.Generator().manual_seed(cfg.seed)
    a = torch.randint(1, HASH_PRIME, (dim,), generator=g, dtype=torch.long)
    b = torch.randint(0, HASH_PRIME, (1,), generator=g, dtype=torch.long)
    return RandomTokenizer(meta, a, b)
