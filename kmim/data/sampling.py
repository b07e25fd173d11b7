"""Data order and per-sample randomness that do not depend on the number of processes.

* `GlobalBatchSampler`: epoch e visits the permutation torch.randperm(N, generator seeded with seed + e), cut into
  global batches of `batch_size * world_size` (the incomplete last one is dropped); process r takes slice r of each
  global batch. On one process a global batch is the local batch, so 1 and N processes see the same samples in the
  same steps, and a resumed run sees the samples an uninterrupted one would.
* `SeededViews`: item (i, e) is drawn under a torch RNG seeded by (seed, e, i) alone: the augmentation of sample i
  in epoch e and its mask noise (`num_patches` uniform numbers, MAE's `random_masking` argsorts them) are the same in
  any process, DataLoader worker or resumed run.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for (seed, epoch, index) (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class SeededViews(Dataset[tuple[torch.Tensor, Any, torch.Tensor]]):
    """(i, epoch) -> (view, label, mask noise (num_patches,)) with every random draw seeded by (seed, epoch, i)."""

    def __init__(self, ds: Dataset[Any], seed: int, num_patches: int) -> None:
        self.ds, self.seed, self.num_patches = ds, seed, num_patches

    def __len__(self) -> int:
        return len(self.ds)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, Any, torch.Tensor]:
        index, epoch = key
        seed = sample_seed(self.seed, epoch, index)
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # the CPU generator the transforms draw from; torch.manual_seed
            # would also queue a lazy CUDA seeding that records a stack trace per sample: 45 % of the loader's time
            random.seed(seed)  # timm's RandAugment and crops draw from Python's `random`
            np.random.seed(seed % 2**32)
            img, label = self.ds[index]  # the dataset's random transform draws from the seeded global RNGs
            noise = torch.rand(self.num_patches)  # (L,)
        random.setstate(py_state)
        np.random.set_state(np_state)
        return img, label, noise


class GlobalBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of (index, epoch) for process `rank` of `world_size` (see the module docstring); `set_epoch` first."""

    def __init__(self, n: int, batch_size: int, seed: int, *, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // (self.batch_size * self.world)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        global_batch = self.batch_size * self.world
        for b in range(len(self)):
            start = b * global_batch + self.rank * self.batch_size
            yield [(i, self.epoch) for i in perm[start : start + self.batch_size]]
