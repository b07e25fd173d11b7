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
    """(i, epoch) -> (view, label, mask noise (num_patches,)) with every random draw seeded by (seed, epoch, i).

    `python_rngs=False` seeds (and saves / restores) torch's CPU generator alone: for transforms that draw from torch
    only (torchvision's), whose views are then the same, at a fraction of the cost (NumPy's get/set_state alone
    took 135 us per sample: benchmarks/bench_decoded.py). timm's RandAugment and RandomErasing draw from Python's
    `random` and NumPy's global RNG: the fine-tuning views keep `python_rngs=True`.
    """

    def __init__(self, ds: Dataset[Any], seed: int, num_patches: int, *, python_rngs: bool = True) -> None:
        self.ds, self.seed, self.num_patches, self.python_rngs = ds, seed, num_patches, python_rngs

    def __len__(self) -> int:
        return len(self.ds)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, Any, torch.Tensor]:
        index, epoch = key
        seed = sample_seed(self.seed, epoch, index)
        if not self.python_rngs:
            return self._draw(index, seed)
        py_state, np_state = random.getstate(), np.random.get_state()
        random.seed(seed)  # timm's RandAugment and crops draw from Python's `random`
        np.random.seed(seed % 2**32)
        out = self._draw(index, seed)
        random.setstate(py_state)
        np.random.set_state(np_state)
        return out

    def _draw(self, index: int, seed: int) -> tuple[torch.Tensor, Any, torch.Tensor]:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # the CPU generator the transforms draw from; torch.manual_seed
            # would also queue a lazy CUDA seeding that records a stack trace per sample: 45 % of the loader's time
            img, label = self.ds[index]  # the dataset's random transform draws from the seeded global RNGs
            noise = torch.rand(self.num_patches)  # (L,)
        return img, label, noise


class GlobalBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of (index, epoch) for process `rank` of `world_size` (see the module docstring); `set_epoch` first."""

    def __init__(self, n: int, batch_size: int, seed: int, *, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Epoch `epoch`, starting after its first `skip` global batches (a run resumed mid-epoch)."""
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return self.n // (self.batch_size * self.world)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        global_batch = self.batch_size * self.world
        for b in range(self.skip, len(self)):
            start = b * global_batch + self.rank * self.batch_size
            yield [(i, self.epoch) for i in perm[start : start + self.batch_size]]
