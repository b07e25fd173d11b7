"""Reference tokenizers for studying TCAS and the theory: `class-wise`, `cross-class` (both read image labels, so
they are analysis tools, not methods) and `random`.

All three work on pixel patches (standardized per patch when tokenizer.patch_norm=true), like `kmeans-pixels`.

* class-wise (oracle, TCAS 0): K-means within each class with M = K // L clusters; token = label * M + cluster.
  No token is ever shared between classes. Requires K >= L; the codebook has L * M tokens.
* cross-class (adversarial, TCAS ~1): K-means within each class with K clusters, ranked by size inside the class;
  token = size rank of the patch's cluster within its own class. Token r holds the r-th most common patch type of
  every class, so its class proportions are (nearly) the class prior. A per-class permutation of ids would not do:
  it sends each class's background to its own token and makes tokens more class-informative, not less.
* random: a seeded universal hash of the quantized patch values (step `quant_step`) mod K. Identical patches get
  the same id; distinct patches get independent, uniformly distributed ids, whatever their class or similarity.
"""

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
from kmim.tokenizers.kmeans import KMeansResult, fit_kmeans
from kmim.tokenizers.patches import normalize_patches, patchify

HASH_PRIME = 2_147_483_647  # 2^31 - 1: products of two residues stay below 2^62 in int64
QUANT_STEP = 1e-3  # in units of the normalized image; uint8 images differ by >= 1 / (255 * std) ~ 1e-2


def pixel_features(imgs: torch.Tensor, patch_size: int, patch_norm: bool) -> torch.Tensor:
    """(B, C, H, W) -> patch vectors (B, P, p*p*C), standardized per patch when `patch_norm`."""
    x = patchify(imgs.float(), patch_size)
    return normalize_patches(x) if patch_norm else x


class _PixelTokenizer(Tokenizer):
    @property
    def feature_dim(self) -> int:
        return self.patch_size**2 * self.in_chans

    def features(self, imgs: torch.Tensor) -> torch.Tensor:
        return pixel_features(imgs, self.patch_size, bool(self.meta.get("patch_norm")))


class _LabelOracle(_PixelTokenizer):
    """Per-class centroids (L, M, D); a patch is assigned among the centroids of its own image's class."""

    needs_labels = True

    def __init__(self, meta: dict[str, Any], centroids: torch.Tensor) -> None:
        super().__init__(meta)
        want = (int(meta["num_classes"]), int(meta["clusters_per_class"]), self.feature_dim)
        if tuple(centroids.shape) != want:
            raise KmimError(f"{self.kind} centroids of shape {tuple(centroids.shape)} do not match (L, M, D) = {want}")
        self.register_buffer("centroids", centroids.float())  # (L, M, D)

    def _check_labels(self, labels: torch.Tensor | None, batch: int) -> torch.Tensor:
        if labels is None:
            raise KmimError(f"the {self.kind} tokenizer reads image labels: pass encode(imgs, labels)")
        if labels.shape != (batch,):
            raise KmimError(f"{self.kind}: labels of shape {tuple(labels.shape)}, expected one per image ({batch},)")
        num_classes = self.centroids.shape[0]
        if labels.min() < 0 or labels.max() >= num_classes:
            raise KmimError(f"{self.kind}: label {int(labels.max())} is outside the {num_classes} fitted classes")
        return labels.long()

    def cluster(self, imgs: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest centroid of the image's own class: (cluster ids (B, P), labels (B,))."""
        x = self.features(imgs)  # (B, P, D)
        y = self._check_labels(labels, x.shape[0]).to(x.device)
        c = self.centroids[y]  # (B, M, D)
        d = (c * c).sum(-1)[:, None, :] - 2.0 * x @ c.transpose(1, 2)  # (B, P, M), minus the constant ||x||^2
        return d.argmin(dim=-1), y


class ClassWiseTokenizer(_LabelOracle):
    """token = label * M + nearest of the M centroids of the image's class: tokens are never shared by classes."""

    kind = "class-wise"

    @torch.no_grad()
    def encode(self, imgs: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        ids, y = self.cluster(imgs, labels)  # (B, P), (B,)
        return y[:, None] * self.centroids.shape[1] + ids  # (B, P)

    @classmethod
    def from_state(cls, meta: dict[str, Any], state: dict[str, torch.Tensor]) -> ClassWiseTokenizer:
        return cls(meta, state["centroids"])


class CrossClassTokenizer(_LabelOracle):
    """token = size rank, within the image's class, of the patch's per-class cluster (ranks (L, K))."""

    kind = "cross-class"

    def __init__(self, meta: dict[str, Any], centroids: torch.Tensor, ranks: torch.Tensor) -> None:
        super().__init__(meta, centroids)
        if ranks.shape != centroids.shape[:2]:
            raise KmimError(f"cross-class ranks of shape {tuple(ranks.shape)} do not match (L, K)")
        self.register_buffer("ranks", ranks.long())  # (L, K)

    @torch.no_grad()
    def encode(self, imgs: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        ids, y = self.cluster(imgs, labels)  # (B, P), (B,)
        return torch.gather(self.ranks[y], 1, ids)  # (B, P)

    @classmethod
    def from_state(cls, meta: dict[str, Any], state: dict[str, torch.Tensor]) -> CrossClassTokenizer:
        return cls(meta, state["centroids"], state["ranks"])


class RandomTokenizer(_PixelTokenizer):
    """token = ((sum_d a_d * round(x_d / step) + b) mod P) mod K, a seeded universal hash of the patch values."""

    kind = "random"

    def __init__(self, meta: dict[str, Any], hash_a: torch.Tensor, hash_b: torch.Tensor) -> None:
        super().__init__(meta)
        if hash_a.shape != (self.feature_dim,) or hash_b.shape != (1,):
            raise KmimError(f"random tokenizer hash of shape {tuple(hash_a.shape)} does not match D={self.feature_dim}")
        self.register_buffer("hash_a", hash_a.long())  # (D,) in [1, P)
        self.register_buffer("hash_b", hash_b.long())  # (1,) in [0, P)

    @torch.no_grad()
    def encode(self, imgs: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.features(imgs).clamp(-1e6, 1e6)  # (B, P, D)
        q = torch.round(x / float(self.meta["quant_step"])).long().remainder(HASH_PRIME)  # (B, P, D)
        h = (q * self.hash_a).remainder(HASH_PRIME).sum(dim=-1)  # (B, P), D terms < 2^31 each
        return (h + self.hash_b).remainder(HASH_PRIME).remainder(self.k)

    @classmethod
    def from_state(cls, meta: dict[str, Any], state: dict[str, torch.Tensor]) -> RandomTokenizer:
        return cls(meta, state["hash_a"], state["hash_b"])


def sample_class_patches(
    ds: Dataset, feature_fn: Any, cap_per_class: int, num_classes: int, seed: int, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded sample of patch vectors (N, D) float32 and their images' labels (N,), drawn evenly over the images,
    about 2 * cap_per_class per class for balanced classes."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    per_img = None
    for imgs, labels in tqdm(make_loader(ds, 256, shuffle=False), desc="collecting patches", disable=not progress):
        x = feature_fn(imgs)  # (B, P, D)
        per_img = per_img or min(x.shape[1], math.ceil(2 * cap_per_class * num_classes / len(ds)))
        pick = np.argsort(rng.random(x.shape[:2]), axis=1)[:, :per_img]  # (B, per_img)
        idx = torch.from_numpy(pick)[..., None].expand(-1, -1, x.shape[2])
        xs.append(torch.gather(x, 1, idx).flatten(0, 1))
        ys.append(labels.long().repeat_interleave(per_img))
    return torch.cat(xs).numpy().astype(np.float32), torch.cat(ys).numpy()


def _fit_per_class(
    cfg: TokenizerConfig, x: np.ndarray, y: np.ndarray, num_classes: int, clusters: int, progress: bool
) -> tuple[torch.Tensor, list[KMeansResult]]:
    """K-means with `clusters` centroids on each class's patches: centroids (L, M, D) and the fit results."""
    cents, results = [], []
    for c in tqdm(range(num_classes), desc=f"k-means per class (M={clusters})", disable=not progress, leave=False):
        xc = x[y == c]
        if len(xc) < clusters:
            raise KmimError(
                f"class {c} has {len(xc)} sampled patches, fewer than the {clusters} clusters per class: "
                "lower tokenizer.k or use more images"
            )
        res = fit_kmeans(xc, clusters, cfg.niter, cfg.seed, cfg.max_points_per_centroid, cfg.init, progress=False)
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
    cfg: TokenizerConfig, ds: Dataset, info: Any, patch_size: int, dataset: str, clusters: int, k: int, progress: bool
) -> tuple[dict[str, Any], torch.Tensor, list[KMeansResult]]:
    num_classes = len(info.classes)
    dim = patch_size**2 * info.channels
    meta = base_meta(
        k,
        patch_size,
        info,
        dataset,
        "pixels",
        dim,
        patch_norm=cfg.patch_norm,
        num_classes=num_classes,
        clusters_per_class=clusters,
        uses_labels=True,
    )
    x, y = sample_class_patches(
        ds,
        lambda imgs: pixel_features(imgs, patch_size, cfg.patch_norm),
        clusters * cfg.max_points_per_centroid,
        num_classes,
        cfg.seed,
        progress,
    )
    cents, results = _fit_per_class(cfg, x, y, num_classes, clusters, progress)
    meta.update(fit=_oracle_fit_meta(cfg, results), **provenance())
    return meta, cents, results


def fit_class_wise_tokenizer(
    cfg: TokenizerConfig, ds: Dataset, info: Any, patch_size: int, dataset: str, progress: bool = True
) -> ClassWiseTokenizer:
    """K-means within each class with K // L clusters (the codebook has L * (K // L) tokens)."""
    num_classes = len(info.classes)
    if cfg.k < num_classes:
        raise KmimError(f"tokenizer.k={cfg.k} is below the {num_classes} classes: class-wise needs K >= L")
    per_class = cfg.k // num_classes
    meta, cents, _ = _fit_oracle(cfg, ds, info, patch_size, dataset, per_class, per_class * num_classes, progress)
    return ClassWiseTokenizer(meta, cents)


def size_ranks(counts: np.ndarray) -> np.ndarray:
    """ranks (L, K): ranks[l, j] = position of cluster j of class l when the class's clusters are sorted by
    decreasing size (ties by index), so 0 is the largest."""
    order = np.argsort(-counts, axis=1, kind="stable")  # (L, K)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(counts.shape[1])[None, :].repeat(len(counts), 0), axis=1)
    return ranks


def fit_cross_class_tokenizer(
    cfg: TokenizerConfig, ds: Dataset, info: Any, patch_size: int, dataset: str, progress: bool = True
) -> CrossClassTokenizer:
    """K-means with K clusters within each class; token = the cluster's size rank within its class."""
    meta, cents, results = _fit_oracle(cfg, ds, info, patch_size, dataset, cfg.k, cfg.k, progress)
    ranks = size_ranks(np.stack([r.counts for r in results]))  # (L, K)
    return CrossClassTokenizer(meta, cents, torch.from_numpy(ranks))


def fit_random_tokenizer(
    cfg: TokenizerConfig, ds: Dataset, info: Any, patch_size: int, dataset: str, progress: bool = True
) -> RandomTokenizer:
    """Draw the hash parameters from tokenizer.seed; nothing is learned from `ds`."""
    dim = patch_size**2 * info.channels
    meta = base_meta(cfg.k, patch_size, info, dataset, "pixels", dim, patch_norm=cfg.patch_norm, quant_step=QUANT_STEP)
    meta.update(fit={"seed": cfg.seed, "hash_prime": HASH_PRIME}, **provenance())
    g = torch.Generator().manual_seed(cfg.seed)
    a = torch.randint(1, HASH_PRIME, (dim,), generator=g, dtype=torch.long)
    b = torch.randint(0, HASH_PRIME, (1,), generator=g, dtype=torch.long)
    return RandomTokenizer(meta, a, b)
