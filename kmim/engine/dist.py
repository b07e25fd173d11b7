"""Process-group helpers. On one process they are no-ops, so torchrun DDP can be added without restructuring."""

from __future__ import annotations

import torch
import torch.distributed as dist

from kmim.errors import KmimError


def resolve_device(name: str, field: str = "train.device") -> torch.device:
    """auto (CUDA when available) | cpu | cuda | cuda:N; `field` names the setting in errors."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise KmimError(f"{field}={name} but CUDA is not available here: use {field}=cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise KmimError(f"{field}={name!r} is not a device: use auto, cpu, cuda or cuda:N") from None


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
