"""The training DataLoader: per-process batches from `GlobalBatchSampler`, worker processes that outlive epochs,
pinned memory and prefetching on CUDA."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from kmim.config import DataConfig
from kmim.data.workers import quiet_worker


def make_train_loader(
    ds: Dataset[Any], batch_sampler: Sampler[Any], cfg: DataConfig, *, device: torch.device
) -> DataLoader[Any]:
    """Workers (`data.num_workers`) persist across epochs and prefetch `data.prefetch_factor` batches each; batches
    land in pinned memory on CUDA so the copy to the GPU can overlap compute (`non_blocking=True` in the step)."""
    workers = cfg.num_workers
    return DataLoader(
        ds,
        batch_sampler=batch_sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=cfg.prefetch_factor if workers > 0 else None,
        worker_init_fn=quiet_worker,
    )
