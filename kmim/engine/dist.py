"""Process-group helpers. On one process they are no-ops, so torchrun DDP can be added without restructuring."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of x over processes (x itself on one process)."""
    if not is_dist():
        return x
    y = x.clone()
    dist.all_reduce(y)
    return y / get_world_size()
