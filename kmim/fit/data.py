"""What every fitter receives: the training split (eval view), its dataset info, the MIM patch size, and how the
reading of the images is shared (this process's rank of `world`, DataLoader workers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset

from kmim.data import DatasetInfo
from kmim.tokenizers.base import TokenizerMeta, base_meta


@dataclass(frozen=True)
class FitData:
    ds: Dataset[Any]  # the training split with the eval transform (no augmentation)
    info: DatasetInfo
    patch_size: int
    dataset: str  # data.name, recorded in the tokenizer file
    rank: int = 0  # K-means fits read every world-th image from `rank` and gather the sample (kmim.fit.kmeans)
    world: int = 1
    num_workers: int = 0  # DataLoader workers that decode the images

    def meta(self, k: int, feature_source: str, feature_dim: int, **extra: Any) -> TokenizerMeta:
        """The fields every tokenizer file records (kmim.tokenizers.base), plus `extra`."""
        return base_meta(
            k,
            self.patch_size,
            self.info,
            dataset=self.dataset,
            feature_source=feature_source,
            feature_dim=feature_dim,
            **extra,
        )
