"""The built-in `mnist5k` dataset: 5,000 real MNIST digits shipped as package data (see MNIST5K_LICENSE.md)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np

SPLITS = ("train", "test", "all")


@lru_cache(maxsize=1)
def _arrays() -> dict[str, np.ndarray]:
    with resources.files("kmim.data").joinpath("mnist5k.npz").open("rb") as f, np.load(f) as z:
        return {k: z[k] for k in z.files}


def load_mnist5k(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of the fixed stratified split (4,000 train / 1,000 test)."""
    if split not in SPLITS:
        raise ValueError(f"mnist5k split {split!r} is not one of {SPLITS}")
    a = _arrays()
    idx = np.arange(len(a["labels"])) if split == "all" else a[f"{split}_idx"].astype(np.int64)
    return a["images"][idx], a["labels"][idx].astype(np.int64)
