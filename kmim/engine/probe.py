"""Training loop of the linear probe (MAE's head: BatchNorm without affine, then a linear layer)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from kmim.engine.loop import Stepper, run_epoch
from kmim.engine.optim import Schedule, build_optimizer


def probe_head(dim: int, num_classes: int) -> nn.Sequential:
    head = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, num_classes))
    nn.init.trunc_normal_(cast(nn.Linear, head[1]).weight, std=0.01)
    nn.init.zeros_(cast(nn.Linear, head[1]).bias)
    return head


def train_linear_probe(
    feats: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    lr: float,
    epochs: int = 100,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> nn.Sequential:
    """Fit the head on cached features (N, D) with AdamW (no decay on the bias), 10% warmup then cosine; returns it
    in eval mode."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = probe_head(feats.shape[1], num_classes)
    opt = build_optimizer(head, lr, weight_decay)
    n = feats.shape[0]
    steps_per_epoch = max(1, n // batch_size)
    total = epochs * steps_per_epoch
    schedule = Schedule(lr, total, total // 10)

    def batches() -> Iterator[torch.Tensor]:
        for _ in range(epochs):
            perm = torch.randperm(n, generator=g)
            for b in range(steps_per_epoch):
                yield perm[b * batch_size : (b + 1) * batch_size]

    def loss_fn(idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        return F.cross_entropy(head(feats[idx]), labels[idx]), {}

    head.train()
    run_epoch(batches(), loss_fn, Stepper(opt, schedule), step=0, n_batches=total)
    return head.eval()
