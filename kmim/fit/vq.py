"""Training of the `vq` tokenizer's VQ-VAE (kmim.tokenizers.vq.VQVAE): the loss, the EMA codebook with dead-code
restarts, the loop (kmim.engine.loop) and codebook statistics.

loss = mean_patches ||decoder(sg-estimator(e_c)) - x_patch||^2 / (p*p*C) + beta * mean ||z - sg(e_c)||^2 / dim;
the codebook itself moves by EMA after each optimizer step (`ema_update`), not by gradient.
"""

from __future__ import annotations

import time
from collections.abc import Sized
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from kmim.data import make_loader
from kmim.engine.loop import Bar, StepHooks, Stepper, run_epoch
from kmim.engine.optim import Schedule, build_optimizer
from kmim.errors import KmimError
from kmim.metrics import codebook_usage, perplexity
from kmim.progress import progress_bar
from kmim.tokenizers.vq import VQVAE


def usage_stats(counts: np.ndarray) -> dict[str, float]:
    """Codebook use from per-code assignment counts (K,): used codes, usage = used / K and perplexity = exp(H)
    of the code distribution (kmim.metrics), K for uniform use and 1 when every vector takes one code."""
    return {"used_codes": int((counts > 0).sum()), "usage": codebook_usage(counts), "perplexity": perplexity(counts)}


def vq_losses(vae: nn.Module, imgs: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict[str, Any]]:
    """Reconstruction + beta * commitment loss of one batch, and the batch's latents and codes for the EMA step."""
    out = vae(imgs)
    rec = F.mse_loss(out["recon"], cast(VQVAE, vae).targets(imgs))
    commit = F.mse_loss(out["z"], out["zq"].detach())
    return rec + beta * commit, {
        "rec": float(rec.detach()),
        "commit": float(commit.detach()),
        "z": out["z"],
        "codes": out["codes"],
    }


@torch.no_grad()
def init_codebook(vae: VQVAE, z: torch.Tensor) -> None:
    """Codebook := K distinct random rows of z (N, dim) (the global torch RNG draws them)."""
    k = vae.codebook.shape[0]
    if z.shape[0] < k:
        raise KmimError(f"the first VQ batch has {z.shape[0]} patches, fewer than K={k}: raise tokenizer.batch_size")
    pick = z[torch.randperm(z.shape[0], device=z.device)[:k]]
    vae.codebook.copy_(pick)
    vae.ema_sum.copy_(pick)
    vae.ema_count.fill_(1.0)
    vae.initialized.fill_(True)


@torch.no_grad()
def ema_update(vae: VQVAE, z: torch.Tensor, codes: torch.Tensor, *, decay: float, threshold: float = 1.0) -> int:
    """EMA codebook step on z (N, dim) assigned to codes (N,); restarts dead codes; returns how many restarted.

    n_k <- decay n_k + (1 - decay) |{i: c_i = k}|,  s_k <- decay s_k + (1 - decay) sum_{c_i = k} z_i,
    e_k = s_k / n_k. A code with n_k < threshold gets e_k = s_k = a random z_i and n_k = 1.
    """
    k = vae.codebook.shape[0]
    counts = torch.bincount(codes, minlength=k).to(z.dtype)  # (K,)
    sums = torch.zeros_like(vae.ema_sum).index_add_(0, codes, z)  # (K, dim)
    vae.ema_count.mul_(decay).add_(counts, alpha=1 - decay)
    vae.ema_sum.mul_(decay).add_(sums, alpha=1 - decay)
    dead = vae.ema_count < threshold  # (K,)
    n_dead = int(dead.sum())
    if n_dead:
        fresh = z[torch.randint(0, z.shape[0], (n_dead,), device=z.device)]  # (n_dead, dim)
        vae.ema_sum[dead] = fresh
        vae.ema_count[dead] = 1.0
    vae.codebook.copy_(vae.ema_sum / vae.ema_count[:, None])
    return n_dead


def train_vqvae(
    vae: VQVAE,
    ds: Dataset[Any],
    epochs: int,
    *,
    lr: float,
    batch_size: int,
    beta: float,
    decay: float,
    device: torch.device,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train `vae` in place (AdamW without weight decay, half an epoch of warmup then cosine); returns fit
    statistics (see `codebook_stats`) plus epochs, steps, restarts (dead-code restarts in total) and wall_s."""
    steps_per_epoch = len(cast(Sized, ds)) // batch_size
    if steps_per_epoch == 0:
        raise KmimError(
            f"tokenizer.batch_size={batch_size} exceeds the {len(cast(Sized, ds))} training images: lower it"
        )
    opt = build_optimizer(vae, lr, weight_decay=0.0)
    schedule = Schedule(lr, epochs * steps_per_epoch, steps_per_epoch // 2)
    step, restarts, t0 = 0, 0, time.perf_counter()

    def loss_fn(batch: tuple[torch.Tensor, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        imgs = batch[0].to(device)
        if not bool(vae.initialized):
            with torch.no_grad():
                init_codebook(vae, vae.latents(imgs).flatten(0, 1))
        return vq_losses(vae, imgs, beta)

    def on_step(_step: int, parts: dict[str, Any]) -> None:
        nonlocal restarts
        restarts += ema_update(vae, parts["z"].detach().flatten(0, 1), parts["codes"].flatten(), decay=decay)

    def postfix(_loss: float, parts: dict[str, Any]) -> dict[str, Any]:
        return {"rec": f"{parts['rec']:.4f}", "commit": f"{parts['commit']:.4f}", "restarts": restarts}

    vae.train()
    for epoch in range(epochs):
        loader = make_loader(ds, batch_size, shuffle=True, seed=seed + epoch)
        step = run_epoch(
            loader,
            loss_fn,
            Stepper(opt, schedule),
            step=step,
            n_batches=steps_per_epoch,
            hooks=StepHooks(on_step=on_step),
            bar=Bar(f"vq-vae {epoch + 1}/{epochs}", progress, postfix),
        ).step
    wall = time.perf_counter() - t0
    stats = codebook_stats(vae, ds, batch_size, device=device, progress=progress)
    return {**stats, "epochs": epochs, "steps": step, "restarts": restarts, "wall_s": round(wall, 2)}


@torch.no_grad()
def codebook_stats(
    vae: nn.Module, ds: Dataset[Any], batch_size: int, *, device: torch.device, progress: bool = True
) -> dict[str, Any]:
    """On every patch of ds: codebook usage and perplexity (`usage_stats`), inertia = mean ||z - e_c||^2 (the
    quantization error, comparable to K-means' inertia) and recon_mse = mean squared pixel error per value."""
    vae.eval()
    k = cast(VQVAE, vae).codebook.shape[0]
    counts = torch.zeros(k, dtype=torch.long, device=device)
    sq_err, rec_err, n_vec, n_val = 0.0, 0.0, 0, 0
    for imgs, _ in progress_bar(
        make_loader(ds, batch_size, shuffle=False), desc="codebook usage", disable=not progress, leave=False
    ):
        imgs = imgs.to(device)
        out = vae(imgs)
        counts += torch.bincount(out["codes"].flatten(), minlength=k)
        sq_err += float((out["z"] - out["zq"]).pow(2).sum())
        rec_err += float((out["recon"] - cast(VQVAE, vae).targets(imgs)).pow(2).sum())
        n_vec += out["codes"].numel()
        n_val += out["recon"].numel()
    return {**usage_stats(counts.cpu().numpy()), "inertia": sq_err / n_vec, "recon_mse": rec_err / n_val}
