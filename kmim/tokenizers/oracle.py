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

from typing import cast

import torch

from kmim.errors import KmimError
from kmim.tokenizers.base import MetaLike, Tokenizer
from kmim.tokenizers.codebook import check_finite
from kmim.tokenizers.sources import PixelSource

HASH_PRIME = 2_147_483_647  # 2^31 - 1: products of two residues stay below 2^62 in int64
QUANT_STEP = 1e-3  # in units of the normalized image; uint8 images differ by >= 1 / (255 * std) ~ 1e-2


class _PixelTokenizer(Tokenizer):
    def __init__(self, meta: MetaLike) -> None:
        super().__init__(meta)
        self.source = PixelSource.from_meta(self.meta)

    @property
    def feature_dim(self) -> int:
        return self.source.dim

    def features(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> patch vectors (B, P, p*p*C), standardized per patch when meta.extra['patch_norm']."""
        return cast(torch.Tensor, self.source(imgs))


class _LabelOracle(_PixelTokenizer):
    """Per-class centroids (L, M, D); a patch is assigned among the centroids of its own image's class."""

    needs_labels = True
    centroids: torch.Tensor  # registered buffer (L, M, D)

    def __init__(self, meta: MetaLike, centroids: torch.Tensor) -> None:
        super().__init__(meta)
        want = (int(self.meta.extra["num_classes"]), int(self.meta.extra["clusters_per_class"]), self.feature_dim)
        if tuple(centroids.shape) != want:
            raise KmimError(f"{self.kind} centroids of shape {tuple(centroids.shape)} do not match (L, M, D) = {want}")
        self.register_buffer("centroids", check_finite(centroids.float(), f"the {self.kind} centroids"))  # (L, M, D)

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


class CrossClassTokenizer(_LabelOracle):
    """token = size rank, within the image's class, of the patch's per-class cluster (ranks (L, K))."""

    kind = "cross-class"
    ranks: torch.Tensor  # registered buffer (L, K)

    def __init__(self, meta: MetaLike, centroids: torch.Tensor, ranks: torch.Tensor) -> None:
        super().__init__(meta, centroids)
        if ranks.shape != centroids.shape[:2]:
            raise KmimError(f"cross-class ranks of shape {tuple(ranks.shape)} do not match (L, K)")
        self.register_buffer("ranks", ranks.long())  # (L, K)

    @torch.no_grad()
    def encode(self, imgs: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        ids, y = self.cluster(imgs, labels)  # (B, P), (B,)
        return torch.gather(self.ranks[y], 1, ids)  # (B, P)


class RandomTokenizer(_PixelTokenizer):
    """token = ((sum_d a_d * round(x_d / step) + b) mod P) mod K, a seeded universal hash of the patch values."""

    kind = "random"
    hash_a: torch.Tensor  # registered buffers
    hash_b: torch.Tensor

    def __init__(self, meta: MetaLike, hash_a: torch.Tensor, hash_b: torch.Tensor) -> None:
        super().__init__(meta)
        if hash_a.shape != (self.feature_dim,) or hash_b.shape != (1,):
            raise KmimError(f"random tokenizer hash of shape {tuple(hash_a.shape)} does not match D={self.feature_dim}")
        self.register_buffer("hash_a", hash_a.long())  # (D,) in [1, P)
        self.register_buffer("hash_b", hash_b.long())  # (1,) in [0, P)

    @torch.no_grad()
    def encode(self, imgs: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.features(imgs).clamp(-1e6, 1e6)  # (B, P, D)
        q = torch.round(x / float(self.meta.extra["quant_step"])).long().remainder(HASH_PRIME)  # (B, P, D)
        h = (q * self.hash_a).remainder(HASH_PRIME).sum(dim=-1)  # (B, P), D terms < 2^31 each
        return (h + self.hash_b).remainder(HASH_PRIME).remainder(self.k)
