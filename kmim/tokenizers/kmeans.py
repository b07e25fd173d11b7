"""K-means tokenizers: a feature source plus a codebook of K centroids.

token of a patch = argmin_k ||f(patch) - c_k||^2 over the centroids c (K, D) of the source's features f
(kmim.tokenizers.sources): `kmeans-pixels` (K-MIM PIXEL), `kmeans-hog` (discretized MaskFeat targets) and
`kmeans-features` (K-MIM DINO / DeiT / MAE: a frozen encoder's patch tokens). Fitting is in kmim.fit.
"""

from __future__ import annotations

from typing import cast

import torch

from kmim.errors import KmimError
from kmim.tokenizers.base import MetaLike, Tokenizer, as_meta
from kmim.tokenizers.codebook import assign, check_finite
from kmim.tokenizers.sources import FeatureSource


class KMeansTokenizer(Tokenizer):
    """Nearest centroid (squared Euclidean) of each patch's feature vector; kind = 'kmeans-' + the source's name."""

    centroids: torch.Tensor  # registered buffer (K, D)

    def __init__(self, meta: MetaLike, source: FeatureSource, centroids: torch.Tensor) -> None:
        super().__init__(meta)
        if centroids.shape != (self.k, source.dim):
            raise KmimError(
                f"centroids of shape {tuple(centroids.shape)} do not match K={self.k} and the {source.name} "
                f"features' dimension {source.dim}: refit the tokenizer"
            )
        self.source = source
        self.register_buffer("centroids", check_finite(centroids.float(), "the tokenizer's centroids"))  # (K, D)

    @property
    def kind(self) -> str:  # type: ignore[override]
        return f"kmeans-{self.source.name}"

    @property
    def feature_dim(self) -> int:
        return self.source.dim

    def features(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) dataset-normalized images -> patch features (B, L, D)."""
        return cast(torch.Tensor, self.source(imgs))

    @torch.no_grad()
    def encode(self, imgs: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.source(imgs)  # (B, L, D)
        b, n, d = x.shape
        return assign(x.reshape(b * n, d), self.centroids).view(b, n)  # (B, L)

    @classmethod
    def from_state(
        cls, meta: MetaLike, state: dict[str, torch.Tensor], source_cls: type[FeatureSource]
    ) -> KMeansTokenizer:
        """Rebuild from a file: the source from meta, then centroids (and a frozen encoder's weights) from state."""
        meta = as_meta(meta)
        tok = cls(meta, source_cls.from_meta(meta), state["centroids"])
        try:
            tok.load_state_dict(state)
        except RuntimeError as e:
            raise KmimError(f"tokenizer state does not match its meta: {str(e).strip().splitlines()[0]}") from None
        return tok
