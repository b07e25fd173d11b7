"""Optimizer and learning-rate schedule (MAE's recipe)."""

from __future__ import annotations

import math

import torch
from timm.optim import param_groups_weight_decay
from torch import nn

from kmim.config import TrainConfig


def effective_lr(cfg: TrainConfig, world_size: int = 1) -> float:
    """lr = base_lr * effective batch / 256, effective batch = batch_size * accum_steps * world_size."""
    return cfg.base_lr * cfg.batch_size * cfg.accum_steps * world_size / 256


def build_optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.AdamW:
    """AdamW with weight decay on >=2-D parameters only (none on biases and norms, as MAE); frozen params excluded."""
    groups = param_groups_weight_decay(model, cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=(cfg.beta1, cfg.beta2))


def lr_at(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float) -> float:
    """Linear warmup from 0 to lr over warmup_steps, then half-cycle cosine from lr down to min_lr at total_steps."""
    if step < warmup_steps:
        return lr * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr
