"""MAE's linear probe (`main_linprobe.py`), for numbers comparable with the paper's tables: a BatchNorm (no affine)
+ linear head on the frozen encoder's feature, trained with LARS (momentum 0.9, trust coefficient 0.001, no trust
ratio or weight decay on biases), lr = lars_base_lr * batch / 256 with warmup and a per-step cosine to 0, on freshly
augmented crops every epoch (RandomResizedCrop, bicubic, and a flip when data.hflip), cross-entropy; the top-1 of
the final epoch on the test split is reported (MAE prints the best epoch instead, a choice on the test set).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.optim import Lars
from torch import nn

from kmim.config import RunConfig
from kmim.data import build_dataset, make_loader
from kmim.data.transforms import lars_probe_transform
from kmim.engine.loop import run_epoch
from kmim.engine.optim import Schedule
from kmim.engine.probe import probe_head
from kmim.eval.features import pool_tokens
from kmim.eval.knn import top1

RECIPE = "lars (MAE main_linprobe: LARS, BN head, augmented crops each epoch, final epoch)"


def lars_optimizer(head: nn.Module, lr: float) -> Lars:
    """LARS on the head: the trust ratio on weight matrices only, as MoCo v3 / MAE."""
    mats = [p for p in head.parameters() if p.ndim > 1]
    rest = [p for p in head.parameters() if p.ndim <= 1]
    groups = [{"params": mats, "always_adapt": True}, {"params": rest, "always_adapt": False}]
    return Lars(groups, lr=lr, momentum=0.9, weight_decay=0.0, trust_coeff=0.001)


def _features(encoder: nn.Module, imgs: torch.Tensor, pool: str) -> torch.Tensor:
    with torch.no_grad():
        return pool_tokens(encoder.forward_features(imgs), pool).float()  # (B, D)


def lars_probe(encoder: nn.Module, cfg: RunConfig, device: str, progress: bool = True) -> dict[str, Any]:
    """Top-1 (%) on the test split after eval.lars_epochs of MAE's linear probe on the feature eval.pool."""
    e = cfg.eval
    train, info = build_dataset(cfg.data, "train")
    train.transform = lars_probe_transform(cfg.data, info.mean, info.std, info.native_size)
    test, _ = build_dataset(cfg.data, "test")
    encoder.eval().to(device)
    torch.manual_seed(cfg.train.seed)
    head = probe_head(encoder.embed_dim, len(info.classes)).to(device)
    lr = e.lars_base_lr * e.lars_batch_size / 256
    opt = lars_optimizer(head, lr)
    spe = len(train) // e.lars_batch_size
    schedule = Schedule(lr, e.lars_epochs * spe, e.lars_warmup_epochs * spe)

    def loss_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        imgs, y = batch[0].to(device), batch[1].to(device)
        return F.cross_entropy(head(_features(encoder, imgs, e.pool)), y), {}

    step = 0
    head.train()
    for epoch in range(e.lars_epochs):
        loader = make_loader(train, e.lars_batch_size, shuffle=True, seed=cfg.train.seed + epoch)
        step = run_epoch(loader, loss_fn, opt, schedule, step, spe, desc=f"lars probe {epoch + 1}/{e.lars_epochs}",
                         progress=progress).step  # fmt: skip
    head.eval()
    preds, labels = [], []
    for imgs, y in make_loader(test, e.batch_size, shuffle=False):
        preds.append(head(_features(encoder, imgs.to(device), e.pool)).argmax(1).cpu())
        labels.append(y)
    return {"top1": top1(torch.cat(preds), torch.cat(labels)), "lr": lr, "epochs": e.lars_epochs}
