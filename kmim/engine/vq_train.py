"""Training loop of the `vq` tokenizer's VQ-VAE (kmim.tokenizers.vq.VQVAE) and its codebook statistics.

loss = mean_patches ||decoder(sg-estimator(e_c)) - x_patch||^2 / (p*p*C) + beta * mean ||z - sg(e_c)||^2 / dim;
the codebook itself moves by EMA after each optimizer step (`VQVAE.ema_update`), not by gradient.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from kmim.data import make_loader
from kmim.engine.optim import lr_at, set_lr
from kmim.errors import KmimError
from kmim.metrics import codebook_usage, perplexity


def usage_stats(counts: np.ndarray) -> dict[str, float]:
    """Codebook use from per-code assignment counts (K,): used codes, usage = used / K and perplexity = exp(H)
    of the code distribution (kmim.metrics), K for uniform use and 1 when every vector takes one code."""
    return {"used_codes": int((counts > 0).sum()), "usage": codebook_usage(counts), "perplexity": perplexity(counts)}


def vq_losses(vae: nn.Module, imgs: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict[str, Any]]:
    """Reconstruction + beta * commitment loss of one batch, and the batch's latents and codes for the EMA step."""
    out = vae(imgs)
    rec = F.mse_loss(out["recon"], vae.targets(imgs))
    commit = F.mse_loss(out["z"], out["zq"].detach())
    return rec + beta * commit, {
        "rec": float(rec.detach()),
        "commit": float(commit.detach()),
        "z": out["z"],
        "codes": out["codes"],
    }


def train_vqvae(
    vae: nn.Module,
    ds: Dataset,
    epochs: int,
    lr: float,
    batch_size: int,
    beta: float,
    decay: float,
    device: torch.device,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train `vae` in place (AdamW, half an epoch of warmup then cosine); returns fit statistics (see
    `codebook_stats`) plus epochs, steps, restarts (dead-code restarts in total) and wall_s."""
    if epochs < 1:
        raise KmimError(f"tokenizer.vq_epochs={epochs} must be at least 1")
    if not 0.0 < decay < 1.0:
        raise KmimError(f"tokenizer.vq_decay={decay} must be in (0, 1)")
    steps_per_epoch = len(ds) // batch_size
    if steps_per_epoch == 0:
        raise KmimError(f"tokenizer.batch_size={batch_size} exceeds the {len(ds)} training images: lower it")
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    total, warmup = epochs * steps_per_epoch, steps_per_epoch // 2
    step, restarts, t0 = 0, 0, time.perf_counter()
    vae.train()
    for epoch in range(epochs):
        loader = make_loader(ds, batch_size, shuffle=True, seed=seed + epoch)
        bar = tqdm(
            loader, total=steps_per_epoch, desc=f"vq-vae {epoch + 1}/{epochs}", disable=not progress, leave=False
        )
        for imgs, _ in bar:
            imgs = imgs.to(device)
            if not bool(vae.initialized):
                with torch.no_grad():
                    vae.init_codebook(vae.latents(imgs).flatten(0, 1))
            set_lr(opt, lr_at(step, total, warmup, lr, 0.0))
            loss, parts = vq_losses(vae, imgs, beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            restarts += vae.ema_update(parts["z"].detach().flatten(0, 1), parts["codes"].flatten(), decay)
            step += 1
            bar.set_postfix(rec=f"{parts['rec']:.4f}", commit=f"{parts['commit']:.4f}", restarts=restarts)
    wall = time.perf_counter() - t0
    stats = codebook_stats(vae, ds, batch_size, device, progress)
    return {**stats, "epochs": epochs, "steps": step, "restarts": restarts, "wall_s": round(wall, 2)}


@torch.no_grad()
def codebook_stats(
    vae: nn.Module, ds: Dataset, batch_size: int, device: torch.device, progress: bool = True
) -> dict[str, Any]:
    """On every patch of ds: codebook usage and perplexity (`usage_stats`), inertia = mean ||z - e_c||^2 (the
    quantization error, comparable to K-means' inertia) and recon_mse = mean squared pixel error per value."""
    vae.eval()
    k = vae.codebook.shape[0]
    counts = torch.zeros(k, dtype=torch.long, device=device)
    sq_err, rec_err, n_vec, n_val = 0.0, 0.0, 0, 0
    for imgs, _ in tqdm(
        make_loader(ds, batch_size, shuffle=False), desc="codebook usage", disable=not progress, leave=False
    ):
        imgs = imgs.to(device)
        out = vae(imgs)
        counts += torch.bincount(out["codes"].flatten(), minlength=k)
        sq_err += float((out["z"] - out["zq"]).pow(2).sum())
        rec_err += float((out["recon"] - vae.targets(imgs)).pow(2).sum())
        n_vec += out["codes"].numel()
        n_val += out["recon"].numel()
    return {**usage_stats(counts.cpu().numpy()), "inertia": sq_err / n_vec, "recon_mse": rec_err / n_val}
