"""Optimizer and learning-rate schedule (MAE's recipe), shared by every training loop of kmim."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from timm.optim import param_groups_weight_decay
from torch import nn


def effective_lr(base_lr: float, global_batch: int) -> float:
    """lr = base_lr * global batch / 256 (MAE's linear scaling; the global batch sums processes and accumulation)."""
    return base_lr * global_batch / 256


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    *,
    betas: tuple[float, float] = (0.9, 0.999),
    fused: bool = False,
    groups: list[dict[str, Any]] | None = None,
) -> torch.optim.AdamW:
    """AdamW with weight decay on >=2-D parameters only (none on biases and norms, as MAE); frozen params excluded
    (timm's `param_groups_weight_decay`), unless `groups` are given. `fused` (CUDA) runs one kernel per step."""
    groups = groups if groups is not None else param_groups_weight_decay(model, weight_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, **({"fused": True} if fused else {}))


def lr_at(step: int, total_steps: int, warmup_steps: int, *, lr: float, min_lr: float) -> float:
    """Linear warmup from 0 to lr over warmup_steps, then half-cycle cosine from lr down to min_lr at total_steps."""
    if step < warmup_steps:
        return lr * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def ema_momentum(step: int, total_steps: int, warmup_steps: int, *, base: float, truncate: float = 1.0) -> float:
    """Teacher EMA momentum (CAPI's schedule): linear from 1.0 to `base` over warmup_steps, then the half-cycle cosine
    m(p) = 1 - (1 - base) (1 + cos(pi p)) / 2 at p = truncate * (step - warmup) / (total - warmup): with truncate = 1 it
    reaches 1.0 at total_steps; CAPI's 0.8 stops at m(0.8) (about 0.9999 for base 0.999)."""
    if step < warmup_steps:
        return 1.0 + (base - 1.0) * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps) * truncate
    return 1.0 - (1.0 - base) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


@dataclass(frozen=True)
class Schedule:
    """Warmup + cosine (`lr_at`) over optimizer steps."""

    lr: float
    total_steps: int
    warmup_steps: int
    min_lr: float = 0.0

    def __call__(self, step: int) -> float:
        return lr_at(step, self.total_steps, self.warmup_steps, lr=self.lr, min_lr=self.min_lr)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """lr for every group, times the group's `lr_scale` when it has one (layer-wise lr decay)."""
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
