"""The attentive probe (CAPI's headline metric): a cross-attention pooling head on the frozen encoder's patch tokens.

Facts from CAPI's `eval_classification.py` (facebookresearch/capi): one learned query attends over the patch tokens
(heads of 64 dimensions, keys and values from one linear map, no query projection, no MLP), then a linear
classifier; AdamW with betas (0.9, 0.95), no weight decay on biases, lr = base x global batch / 256, linear warmup
then cosine to 0; a grid of learning rates x weight decays trained side by side on the same features, the head
chosen on a held-out 10 % of train, training crops augmented. The head is timm's `AttentionPoolLatent` with
`q_proj=False, out_features=0` (exactly that pooling) followed by a `Linear`.

Run as the LARS probe is (kmim.eval.lars): each process encodes its slice of every global batch (freshly seeded
RandomResizedCrop of the full image each epoch, workers, bf16 on CUDA, at most eval.attentive.micro_batch_size images
per forward), the heads' gradients are averaged over the processes, so the heads are the same on 1 or N processes.
Held-out and test images (eval view) are streamed through the encoder once at the end, sharded: no patch-token
cache, so it runs on ImageNet as on mnist5k. Reported: the test top-1 of the head with the best held-out top-1.
"""

from __future__ import annotations

import math
from itertools import product
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from timm.layers import AttentionPoolLatent
from torch import nn
from torch.utils.data import Dataset, Subset

from kmim.config import RunConfig
from kmim.data import build_dataset, make_loader
from kmim.data.transforms import lars_probe_transform
from kmim.dist import all_reduce_mean, all_reduce_sum, get_rank, get_world_size
from kmim.engine.finetune import holdout_split
from kmim.engine.optim import Schedule, set_lr
from kmim.engine.trainer import autocast_ctx
from kmim.errors import KmimError
from kmim.eval.probe_loop import probe_data, train_epochs
from kmim.eval.resume import ProbeCheckpoint
from kmim.progress import progress_bar

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

RECIPE = "attentive (CAPI: attention-pooling head on frozen patch tokens, AdamW lr x wd grid chosen on held-out 10 %)"
HEAD_DIM = 64


class AttentiveHead(nn.Module):
    """patch tokens (B, N, D) -> logits (B, C): one learned query, max(1, D // 64) heads, then a linear layer."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        heads = max(1, dim // HEAD_DIM)
        if dim % heads:
            raise KmimError(f"eval.probe=attentive: the encoder width {dim} does not split into heads of {HEAD_DIM}")
        self.pool = AttentionPoolLatent(dim, out_features=0, num_heads=heads, q_proj=False)
        self.fc = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.fc(self.pool(tokens)))  # (B, D) pooled -> (B, C)


@torch.no_grad()
def patch_tokens(encoder: nn.Module, imgs: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(B, C, H, W) -> the frozen encoder's patch tokens (B, L, D) after its final norm, fp32."""
    with autocast_ctx("auto", device):  # bf16 on CUDA, fp32 on CPU
        # (B, prefix + L, D)
        tokens = cast("VisionTransformer", encoder).forward_features(imgs.to(device, non_blocking=True))
    return tokens[:, cast("VisionTransformer", encoder).num_prefix_tokens :].float()


def _grid(cfg: RunConfig) -> list[tuple[float, float]]:
    return list(product(cfg.eval.attentive.lrs, cfg.eval.attentive.weight_decays))


def _optimizer(heads: nn.ModuleList, grid: list[tuple[float, float]], global_batch: int) -> torch.optim.AdamW:
    """One AdamW over every head; head h's groups carry lr_scale = lr_h x global / 256 and its weight decay on
    matrices and the query (none on biases)."""
    groups = []
    for head, (lr, wd) in zip(heads, grid, strict=True):
        scale = lr * global_batch / 256
        decay = [p for n, p in head.named_parameters() if not n.endswith("bias")]
        rest = [p for n, p in head.named_parameters() if n.endswith("bias")]
        groups += [
            {"params": decay, "weight_decay": wd, "lr_scale": scale},
            {"params": rest, "weight_decay": 0.0, "lr_scale": scale},
        ]
    return torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.95))


def attentive_probe(
    encoder: nn.Module,
    cfg: RunConfig,
    device: str | torch.device,
    *,
    progress: bool = True,
    checkpoint: ProbeCheckpoint | None = None,
) -> dict[str, Any]:
    """Train every head of the lr x wd grid on augmented crops of train minus the held-out part; return the test
    top-1 (%) of the head with the best held-out top-1, with the grid's held-out numbers. With a `checkpoint` it
    continues from it, saves after every epoch and stops cleanly on a preemption signal."""
    e, dev = cfg.eval, torch.device(device)
    train, info = build_dataset(cfg.data, "train")
    train_eval, _ = build_dataset(cfg.data, "train")
    cast(Any, train).transform = lars_probe_transform(cfg.data, info.mean, info.std, native=info.native_size)
    fit, held = _split(train, train_eval, e.attentive.holdout, seed=cfg.train.seed)
    data = probe_data(cfg, "attentive", fit, device=dev, what="training images left after the held-out part")
    plan, spe = data.plan, data.steps
    encoder.eval().to(dev)
    grid = _grid(cfg)
    torch.manual_seed(cfg.train.seed)
    heads = nn.ModuleList(
        AttentiveHead(int(cast("VisionTransformer", encoder).embed_dim), len(info.classes)) for _ in grid
    ).to(dev)
    opt = _optimizer(heads, grid, plan.global_batch)
    schedule = Schedule(1.0, e.attentive.epochs * spe, e.attentive.warmup_epochs * spe)
    ck = checkpoint or ProbeCheckpoint(None, "", cfg)

    def step(batches: Any, at: int) -> float:
        return _step(encoder, heads, opt, lr=schedule(at), batches=batches, accum=plan.accum, device=dev, step=at)

    announce = (
        f"attentive probe: {plan.describe()}, {len(grid)} heads (lr x wd), {spe} steps x {e.attentive.epochs} epochs"
    )
    train_epochs(
        data,
        ck,
        heads,
        opt=opt,
        epochs=e.attentive.epochs,
        name="attentive probe",
        announce=announce,
        step=step,
        progress=progress,
    )
    held_top1 = _top1(encoder, heads, held, cfg=cfg, device=dev, progress=progress, name="held-out")
    best = max(range(len(grid)), key=held_top1.__getitem__)
    test, _ = build_dataset(cfg.data, "test")
    test_top1 = _top1(encoder, heads[best : best + 1], test, cfg=cfg, device=dev, progress=progress, name="test")[0]
    ck.finish()
    return {
        "top1": test_top1,
        "held_out_top1": held_top1[best],
        "lr": grid[best][0],
        "weight_decay": grid[best][1],
        "grid": [[lr, wd, acc] for (lr, wd), acc in zip(grid, held_top1, strict=True)],
        "epochs": e.attentive.epochs,
        "global_batch": plan.global_batch,
    }


def _split(
    train: Dataset[Any], train_eval: Dataset[Any], fraction: float, *, seed: int
) -> tuple[Dataset[Any], Dataset[Any]]:
    """holdout_split under this probe's names: it has no held-out-free mode (its head is chosen on held-out train)."""
    try:
        return holdout_split(train, train_eval, fraction, seed=seed)
    except KmimError as err:
        msg = str(err).replace("finetune.holdout", "eval.attentive.holdout")
        msg = msg.replace(", or eval.attentive.holdout=0", " (the probe chooses its head on held-out train)")
        raise KmimError(msg.replace(" or eval.attentive.holdout=0", "")) from None


def _step(
    encoder: nn.Module,
    heads: nn.ModuleList,
    opt: torch.optim.AdamW,
    *,
    lr: float,
    batches: Any,
    accum: int,
    device: torch.device,
    step: int,
) -> float:
    """One step of every head on this process's `accum` micro-batches of the global batch; gradients averaged
    over the processes (each process's micro-batches are equal in size, so this is the global mean)."""
    set_lr(opt, lr)
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for _ in range(accum):
        imgs, y, _noise = next(batches)
        tokens = patch_tokens(encoder, imgs, device)  # (b, L, D)
        y = y.to(device, non_blocking=True)
        loss = sum(F.cross_entropy(head(tokens), y) for head in heads) / accum
        loss.backward()  # type: ignore[union-attr]
        total += float(loss.detach())  # type: ignore[union-attr]
    if get_world_size() > 1:
        for p in heads.parameters():
            if p.grad is not None:
                p.grad.copy_(all_reduce_mean(p.grad))
    value = float(all_reduce_mean(torch.tensor(total, dtype=torch.float64))) / len(heads)
    if not math.isfinite(value):
        raise KmimError(f"attentive probe: the loss became {value} at step {step}: lower eval.attentive.lrs")
    opt.step()
    return value


@torch.no_grad()
def _top1(
    encoder: nn.Module,
    heads: nn.ModuleList,
    ds: Dataset[Any],
    *,
    cfg: RunConfig,
    device: torch.device,
    progress: bool,
    name: str,
) -> list[float]:
    """Top-1 (%) of each head on `ds` (eval view), each process scoring every world-th image."""
    rank, world = get_rank(), get_world_size()
    part = ds if world == 1 else Subset(ds, list(range(rank, len(ds), world)))  # type: ignore[arg-type]
    loader = make_loader(part, cfg.eval.batch_size, shuffle=False, num_workers=cfg.data.num_workers)
    heads.eval()
    correct = torch.zeros(len(heads), dtype=torch.float64, device=device)
    for imgs, y in progress_bar(loader, desc=f"attentive probe: {name}", disable=not progress, leave=False):
        tokens = patch_tokens(encoder, imgs, device)  # (B, L, D)
        y = y.to(device)
        correct += torch.stack([(head(tokens).argmax(dim=1) == y).sum().double() for head in heads])
    heads.train()
    return cast(list[float], (100.0 * all_reduce_sum(correct) / len(ds)).tolist())  # type: ignore[arg-type]
