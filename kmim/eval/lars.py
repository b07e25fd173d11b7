"""MAE's linear probe (`main_linprobe.py`), for numbers comparable with the paper's tables, data-parallel.

The recipe: a BatchNorm (no affine) + linear head on the frozen encoder's feature (eval.pool), trained with LARS
(momentum 0.9, trust coefficient 0.001, no trust ratio or weight decay on biases), lr = eval.lars.base_lr x global batch
/ 256 with warmup and a per-step cosine to 0, on freshly augmented crops every epoch (RandomResizedCrop of the full
image, bicubic, and a flip when data.hflip), cross-entropy.

How it runs at scale. The encoder is frozen, so only its forward over the crops costs anything: each process
encodes its slice of every global batch (`GlobalBatchSampler`, DataLoader workers, bf16 autocast on CUDA, at most
eval.lars.micro_batch_size images per forward), the features of the whole global batch are all-gathered, and every
process takes the same head step on all of them. The BatchNorm statistics are therefore those of the global batch
(what SyncBatchNorm gives; MAE's DDP head normalises each GPU's 512 images instead), and the head is the same on 1
or N processes (float tolerance). The crops are seeded per sample and epoch (`SeededViews`). The test features
(eval view) are computed once, sharded, and the head is scored on them after every epoch: `top1` is the final
epoch's, `best_top1` the best epoch's (MAE's printed number, a choice made on the test set).
"""

from __future__ import annotations

import math
from collections.abc import Sized
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from timm.optim import Lars
from torch import nn
from torch.utils.data import Dataset, Subset

from kmim.config import RunConfig
from kmim.data import build_dataset, make_loader
from kmim.data.transforms import lars_probe_transform
from kmim.dist import all_gather_cat, gather_in_order, get_rank, get_world_size
from kmim.engine.optim import Schedule, set_lr
from kmim.engine.probe import probe_head
from kmim.engine.trainer import autocast_ctx
from kmim.errors import KmimError
from kmim.eval.features import pool_tokens
from kmim.eval.knn import top1
from kmim.eval.probe_loop import probe_data, train_epochs
from kmim.eval.resume import ProbeCheckpoint
from kmim.progress import progress_bar

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

RECIPE = "lars (MAE main_linprobe: LARS, BN head over the global batch, RandomResizedCrop each epoch)"


def lars_optimizer(head: nn.Module, lr: float) -> Lars:
    """LARS on the head: the trust ratio on weight matrices only, as MoCo v3 / MAE."""
    mats = [p for p in head.parameters() if p.ndim > 1]
    rest = [p for p in head.parameters() if p.ndim <= 1]
    groups = [{"params": mats, "always_adapt": True}, {"params": rest, "always_adapt": False}]
    return Lars(groups, lr=lr, momentum=0.9, weight_decay=0.0, trust_coeff=0.001)


@torch.no_grad()
def _features(encoder: nn.Module, imgs: torch.Tensor, pool: str, *, device: torch.device) -> torch.Tensor:
    with autocast_ctx("auto", device):  # bf16 on CUDA, fp32 on CPU
        # (B, 1 + L, D)
        tokens = cast("VisionTransformer", encoder).forward_features(imgs.to(device, non_blocking=True))
    return pool_tokens(tokens, pool).float()  # (B, D)


@torch.no_grad()
def test_features(
    encoder: nn.Module, ds: Dataset[Any], cfg: RunConfig, *, device: torch.device, progress: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, D) and labels (N,) of the test split (eval view), each process encoding every world-th image."""
    rank, world = get_rank(), get_world_size()
    indices = torch.arange(rank, len(cast(Sized, ds)), world)  # (m,)
    part = ds if world == 1 else Subset(ds, indices.tolist())
    loader = make_loader(part, cfg.eval.batch_size, shuffle=False, num_workers=cfg.data.num_workers)
    feats, labels = [], []
    for imgs, y in progress_bar(loader, desc="lars probe: test features", disable=not progress, leave=False):
        feats.append(_features(encoder, imgs, cfg.eval.pool, device=device))
        labels.append(y.to(device))
    idx = indices.to(device)
    return gather_in_order(torch.cat(feats), idx, len(cast(Sized, ds))), gather_in_order(
        torch.cat(labels), idx, len(cast(Sized, ds))
    )


def lars_probe(
    encoder: nn.Module,
    cfg: RunConfig,
    device: str | torch.device,
    *,
    progress: bool = True,
    checkpoint: ProbeCheckpoint | None = None,
) -> dict[str, Any]:
    """Top-1 (%) on the test split of MAE's linear probe on the feature eval.pool: the final epoch's and the best.
    With a `checkpoint` it continues from it, saves after every epoch and stops cleanly on a preemption signal."""
    e, dev = cfg.eval, torch.device(device)
    train, info = build_dataset(cfg.data, "train")
    cast(Any, train).transform = lars_probe_transform(cfg.data, info.mean, info.std, native=info.native_size)
    data = probe_data(cfg, "eval", train, device=dev)
    plan, spe = data.plan, data.steps
    encoder.eval().to(dev)
    test, _ = build_dataset(cfg.data, "test")
    te_x, te_y = test_features(encoder, test, cfg, device=dev, progress=progress)
    torch.manual_seed(cfg.train.seed)
    head = probe_head(cast("VisionTransformer", encoder).embed_dim, len(info.classes)).to(dev)
    lr = e.lars.base_lr * plan.global_batch / 256
    opt = lars_optimizer(head, lr)
    schedule = Schedule(lr, e.lars.epochs * spe, e.lars.warmup_epochs * spe)
    ck, history = checkpoint or ProbeCheckpoint(None, "", cfg), []

    def step(batches: Any, at: int) -> float:
        x, y = _global_batch(encoder, batches, plan.accum, pool=e.pool, device=dev)  # (G, D), (G,)
        return _head_step(head, opt, schedule(at), x=x, y=y, step=at)

    def end_epoch(epoch: int) -> str:
        head.eval()
        with torch.no_grad():
            history.append(top1(head(te_x).argmax(1).cpu(), te_y.cpu()))
        head.train()
        return f"  test top-1 {history[-1]:.2f}"

    announce = f"lars probe: {plan.describe()}, lr {lr:.3g}, {spe} steps x {e.lars.epochs} epochs"
    train_epochs(
        data,
        ck,
        head,
        opt=opt,
        epochs=e.lars.epochs,
        name="lars probe",
        announce=announce,
        step=step,
        end_epoch=end_epoch,
        history=history,
        progress=progress,
    )
    ck.finish()
    best = max(range(len(history)), key=history.__getitem__)
    return {
        "top1": history[-1],
        "best_top1": history[best],
        "best_epoch": best + 1,
        "lr": lr,
        "epochs": e.lars.epochs,
        "global_batch": plan.global_batch,
        "history": history,
        "head": {k: v.cpu() for k, v in head.state_dict().items()},
    }


def _global_batch(
    encoder: nn.Module, batches: Any, accum: int, *, pool: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of one global batch: this process's `accum` micro-batches, gathered from every process."""
    feats, labels = [], []
    for _ in range(accum):
        imgs, y, _noise = next(batches)
        feats.append(_features(encoder, imgs, pool, device=device))
        labels.append(y.to(device, non_blocking=True))
    return all_gather_cat(torch.cat(feats)), all_gather_cat(torch.cat(labels))


def _head_step(head: nn.Module, opt: Lars, lr: float, *, x: torch.Tensor, y: torch.Tensor, step: int) -> float:
    set_lr(opt, lr)
    loss = F.cross_entropy(head(x), y)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise KmimError(f"lars probe: the loss became {value} at step {step}: lower eval.lars.base_lr")
    opt.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]  # torch's Tensor.backward is unannotated
    opt.step()  # type: ignore[no-untyped-call]  # timm's Lars.step is unannotated
    return value
