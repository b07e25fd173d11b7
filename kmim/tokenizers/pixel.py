"""K-MIM PIXEL: K-means over raw (dataset-normalized) pixel patches; optional per-patch standardization."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from kmim.config import TokenizerConfig
from kmim.data import make_loader
from kmim.errors import KmimError
from kmim.tokenizers.base import Tokenizer, base_meta, provenance
from kmim.tokenizers.kmeans import KMeansResult, assign, fit_kmeans
from kmim.tokenizers.patches import normalize_patches, patchify


class KMeansPixelTokenizer(Tokenizer):
    """Token of a patch = index of the nearest centroid (squared Euclidean) of its p*p*C pixel vector."""

    kind = "kmeans-pixels"

    def __init__(self, meta: dict[str, Any], centroids: torch.Tensor) -> None:
        super().__init__(meta)
        if centroids.shape != (self.k, self.feature_dim):
            raise KmimError(
                f"centroids of shape {tuple(centroids.shape)} do not match K={self.k}, D={self.feature_dim}"
            )
        self.register_buffer("centroids", centroids.float())  # (K, D)

    @property
    def feature_dim(self) -> int:
        return self.patch_size**2 * self.in_chans

    def features(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> patch vectors (B, L, p*p*C), standardized per patch when meta['patch_norm']."""
        x = patchify(imgs.float(), self.patch_size)
        return normalize_patches(x) if self.meta.get("patch_norm") else x

    @torch.no_grad()
    def encode(self, imgs: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.features(imgs)  # (B, L, D)
        b, n, d = x.shape
        return assign(x.reshape(b * n, d), self.centroids).view(b, n)  # (B, L)

    @classmethod
    def from_state(cls, meta: dict[str, Any], state: dict[str, torch.Tensor]) -> KMeansPixelTokenizer:
        return cls(meta, state["centroids"])


def sample_patches(
    ds: Dataset, feature_fn: Any, cap: int, seed: int, batch_size: int = 256, progress: bool = True
) -> np.ndarray:
    """A seeded sample of about 2 * cap patch vectors, drawn evenly over all images of `ds` (N, D) float32.

    feature_fn maps a batch of images (B, C, H, W) to per-patch vectors (B, L, D).
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


def fit_pixel_tokenizer(
    cfg: TokenizerConfig, ds: Dataset, info: Any, patch_size: int, dataset: str, progress: bool = True
) -> KMeansPixelTokenizer:
    """Fit K-means on patches of the (eval-transformed) training split `ds`."""
    dim = patch_size**2 * info.channels
    meta = base_meta(cfg.k, patch_size, info, dataset, "pixels", dim, patch_norm=cfg.patch_norm)
    probe = KMeansPixelTokenizer(meta, torch.zeros(cfg.k, dim))
    x = sample_patches(ds, probe.features, cfg.k * cfg.max_points_per_centroid, cfg.seed, progress=progress)
    res = fit_kmeans(x, cfg.k, cfg.niter, cfg.seed, cfg.max_points_per_centroid, cfg.init, progress)
    meta.update(fit=kmeans_fit_meta(cfg, res), **provenance())
    return KMeansPixelTokenizer(meta, torch.from_numpy(res.centroids))
