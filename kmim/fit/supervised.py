"""Training loop of the supervised encoder behind `kmeans-features` with `tokenizer.encoder=supervised`.

A ViT encoder plus a linear head on the mean of its patch tokens, trained with cross-entropy on the labelled
training split: the DeiT analogue of the paper's rebuttal where no public supervised weights exist. Mean pooling
(rather than DeiT's CLS token) sends gradient to every patch token of the last block, which is the layer the
tokenizer clusters by default. timm's PatchDropout drops a random `patch_drop` fraction of the patch tokens of each
training image (Liu et al. 2022, "PatchDropout"): it cuts the cost of a step by about that fraction and regularizes;
features are then extracted with every patch visible. Images are the eval view (no augmentation).
"""

from __future__ import annotations

import time
from collections.abc import Sized
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from timm.layers import PatchDropout
from torch import nn
from torch.utils.data import Dataset

from kmim.data import make_loader
from kmim.engine.loop import Bar, Stepper, run_epoch
from kmim.engine.optim import Schedule, build_optimizer
from kmim.errors import KmimError

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer


def pooled_logits(encoder: nn.Module, head: nn.Module, imgs: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> class logits (B, classes) from the mean of the final-norm patch tokens."""
    # (B, prefix + L', D); L' < L while PatchDropout is active
    tokens = cast("VisionTransformer", encoder).forward_features(imgs)
    return cast(torch.Tensor, head(tokens[:, cast("VisionTransformer", encoder).num_prefix_tokens :].mean(dim=1)))


def train_supervised(
    encoder: nn.Module,
    num_classes: int,
    ds: Dataset[Any],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    device: torch.device,
    seed: int = 0,
    patch_drop: float = 0.5,
    weight_decay: float = 0.05,
    progress: bool = True,
) -> dict[str, Any]:
    """Train `encoder` in place (AdamW, one warmup epoch then cosine); returns it frozen in eval mode and stats.

    stats: epochs, steps, final_loss (mean over the last epoch), train_top1 (% correct over the last epoch, with
    patch dropout on), wall_s.
    """
    steps_per_epoch = len(cast(Sized, ds)) // batch_size
    if steps_per_epoch == 0:
        raise KmimError(
            f"tokenizer.batch_size={batch_size} exceeds the {len(cast(Sized, ds))} training images: lower it"
        )
    head = nn.Linear(cast("VisionTransformer", encoder).embed_dim, num_classes)
    model = nn.ModuleDict({"encoder": encoder, "head": head}).to(device)
    opt = build_optimizer(model, lr, weight_decay)
    schedule = Schedule(lr, epochs * steps_per_epoch, steps_per_epoch)
    if patch_drop > 0:
        encoder.patch_drop = PatchDropout(
            patch_drop, num_prefix_tokens=cast("VisionTransformer", encoder).num_prefix_tokens
        )
    tally: dict[str, float]
    t0, step, tally = time.perf_counter(), 0, {}

    def loss_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        imgs, labels = batch[0].to(device), batch[1].to(device)
        logits = pooled_logits(encoder, head, imgs)  # (B, classes)
        loss = F.cross_entropy(logits, labels)
        tally["loss"] += float(loss.detach()) * len(labels)
        tally["correct"] += int((logits.argmax(dim=1) == labels).sum())
        tally["seen"] += len(labels)
        return loss, {}

    def postfix(_loss: float, _extras: dict[str, Any]) -> dict[str, str]:
        return {"loss": f"{tally['loss'] / tally['seen']:.3f}", "top1": f"{100 * tally['correct'] / tally['seen']:.1f}"}

    model.train()
    for epoch in range(epochs):
        tally.update(loss=0.0, correct=0, seen=0)
        loader = make_loader(ds, batch_size, shuffle=True, seed=seed + epoch)
        step = run_epoch(
            loader,
            loss_fn,
            Stepper(opt, schedule),
            step=step,
            n_batches=steps_per_epoch,
            bar=Bar(f"supervised {epoch + 1}/{epochs}", progress, postfix),
        ).step
    encoder.patch_drop = nn.Identity()
    encoder.requires_grad_(False).eval()
    wall = time.perf_counter() - t0
    return {
        "epochs": epochs,
        "steps": step,
        "final_loss": tally["loss"] / tally["seen"],
        "train_top1": 100 * tally["correct"] / tally["seen"],
        "wall_s": round(wall, 2),
    }
