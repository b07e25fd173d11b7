"""Tokenizer registry: fit, load and save tokenizers that map each image patch to a discrete id."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from kmim.config import TokenizerConfig
from kmim.errors import KmimError
from kmim.tokenizers.base import Tokenizer, read_tokenizer_file
from kmim.tokenizers.features import FeatureTokenizer, fit_feature_tokenizer
from kmim.tokenizers.hog import KMeansHOGTokenizer, fit_hog_tokenizer
from kmim.tokenizers.oracle import (
    ClassWiseTokenizer,
    CrossClassTokenizer,
    RandomTokenizer,
    fit_class_wise_tokenizer,
    fit_cross_class_tokenizer,
    fit_random_tokenizer,
)
from kmim.tokenizers.pixel import KMeansPixelTokenizer, fit_pixel_tokenizer
from kmim.tokenizers.vq import VQTokenizer, fit_vq_tokenizer

__all__ = ["FITTERS", "KINDS", "Tokenizer", "fit_tokenizer", "load_tokenizer"]

KINDS: dict[str, type[Tokenizer]] = {
    KMeansPixelTokenizer.kind: KMeansPixelTokenizer,
    ClassWiseTokenizer.kind: ClassWiseTokenizer,
    CrossClassTokenizer.kind: CrossClassTokenizer,
    RandomTokenizer.kind: RandomTokenizer,
    FeatureTokenizer.kind: FeatureTokenizer,
    KMeansHOGTokenizer.kind: KMeansHOGTokenizer,
    VQTokenizer.kind: VQTokenizer,
}
FITTERS: dict[str, Callable[..., Tokenizer]] = {
    KMeansPixelTokenizer.kind: fit_pixel_tokenizer,
    ClassWiseTokenizer.kind: fit_class_wise_tokenizer,
    CrossClassTokenizer.kind: fit_cross_class_tokenizer,
    RandomTokenizer.kind: fit_random_tokenizer,
    FeatureTokenizer.kind: fit_feature_tokenizer,
    KMeansHOGTokenizer.kind: fit_hog_tokenizer,
    VQTokenizer.kind: fit_vq_tokenizer,
}


def fit_tokenizer(
    cfg: TokenizerConfig, ds: Dataset, info: Any, patch_size: int, dataset: str, progress: bool = True
) -> Tokenizer:
    """Fit tokenizer `cfg.name` on the eval-transformed training split `ds`."""
    if cfg.name not in FITTERS:
        raise KmimError(f"tokenizer.name={cfg.name!r} is unknown: valid names are {', '.join(sorted(FITTERS))}")
    return FITTERS[cfg.name](cfg, ds, info, patch_size, dataset, progress)


def load_tokenizer(path: str | Path) -> Tokenizer:
    blob = read_tokenizer_file(path)
    kind = blob["kind"]
    if kind not in KINDS:
        raise KmimError(f"{path}: tokenizer kind {kind!r} is unknown: valid kinds are {', '.join(sorted(KINDS))}")
    return KINDS[kind].from_state(blob["meta"], blob["state"])
