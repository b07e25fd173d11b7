"""Datasets (package data or local folders, never downloaded), transforms and loaders."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from kmim.data.datasets import DATASETS, DatasetInfo, build_dataset
from kmim.data.workers import quiet_worker

__all__ = ["DATASETS", "DatasetInfo", "build_dataset", "make_loader", "stack_dataset"]


def make_loader(
    ds: Dataset[Any], batch_size: int, shuffle: bool, *, seed: int = 0, num_workers: int = 0
) -> DataLoader[Any]:
    """A DataLoader whose order depends only on `seed` (pass seed + epoch for a new, reproducible order)."""
    g = torch.Generator().manual_seed(seed)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=g,
        num_workers=num_workers,
        drop_last=shuffle,
        worker_init_fn=quiet_worker,
    )


def stack_dataset(ds: Dataset[Any], batch_size: int = 512, num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """All images (N, C, H, W) and labels (N,) of a dataset, in order."""
    xs, ys = [], []
    for x, y in make_loader(ds, batch_size, shuffle=False, num_workers=num_workers):
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)
