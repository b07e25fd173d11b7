"""Fitting the K-means and VQ tokenizers on the (eval-transformed) training split.

Every K-means tokenizer is fitted the same way: build its feature source, sample patch features of the training
split (`fit_patch_kmeans`), run K-means, and record the source's meta, the fit statistics and provenance.
"""

from __future__ import annotations

from collections.abc import Sized
from typing import cast

import torch

from kmim.config import TokenizerConfig
from kmim.dist import resolve_device
from kmim.fit.data import FitData
from kmim.fit.encoders import (
    check_layer,
    encoder_source,
    isolated_rng,
    kmim_encoder,
    mim_grid,
    supervised_encoder,
    timm_encoder,
)
from kmim.fit.kmeans import fit_patch_kmeans
from kmim.fit.vq import train_vqvae
from kmim.tokenizers import EncoderSource, FeatureSource, HOGSource, KMeansTokenizer, PixelSource, VQTokenizer
from kmim.tokenizers.base import TokenizerMeta
from kmim.tokenizers.hog import HOG_EPS, check_hog_params
from kmim.tokenizers.vq import VQVAE


def fit_kmeans_tokenizer(
    cfg: TokenizerConfig,
    data: FitData,
    source: FeatureSource,
    *,
    meta: TokenizerMeta,
    device: torch.device,
    progress: bool,
) -> KMeansTokenizer:
    """K-means over `source`'s patch features (computed on `device`); `meta` gets the fit statistics."""
    source = source.to(device)
    centroids, fit = fit_patch_kmeans(
        cfg,
        data.ds,
        lambda imgs: source(imgs.to(device)).float().cpu(),
        progress=progress,
        rank=data.rank,
        world=data.world,
        num_workers=data.num_workers,
    )
    meta.stamp(fit)
    return KMeansTokenizer(meta, source.cpu(), centroids)


def fit_pixels(cfg: TokenizerConfig, data: FitData, progress: bool = True) -> KMeansTokenizer:
    """K-MIM PIXEL: K-means over (optionally per-patch standardized) pixel patches."""
    source = PixelSource(data.patch_size, data.info.channels, cfg.patch_norm)
    meta = data.meta(cfg.k, "pixels", source.dim, patch_norm=cfg.patch_norm)
    return fit_kmeans_tokenizer(cfg, data, source, meta=meta, device=torch.device("cpu"), progress=progress)


def fit_hog(cfg: TokenizerConfig, data: FitData, progress: bool = True) -> KMeansTokenizer:
    """K-means over per-patch HOG descriptors (kmim.tokenizers.hog)."""
    h = cfg.hog
    check_hog_params(data.patch_size, h.cells, h.bins)
    info = data.info
    source = HOGSource(data.patch_size, info.channels, h.cells, bins=h.bins, mean=list(info.mean), std=list(info.std))
    meta = data.meta(cfg.k, "hog", source.dim, hog_cells=h.cells, hog_bins=h.bins, hog_eps=HOG_EPS)
    return fit_kmeans_tokenizer(cfg, data, source, meta=meta, device=torch.device("cpu"), progress=progress)


def fit_features(cfg: TokenizerConfig, data: FitData, progress: bool = True) -> KMeansTokenizer:
    """Build or load the frozen encoder named by cfg.encoder, then K-means its patch features."""
    source_kind = encoder_source(cfg.encoder)
    grid = mim_grid(data.ds, data.patch_size)
    device = resolve_device(cfg.device, "tokenizer.device")
    if source_kind == "timm":
        enc, src_meta = timm_encoder(cfg, grid, data.info.channels)
    elif source_kind == "kmim":
        enc, src_meta = kmim_encoder(cfg, grid, data.info)
    else:
        enc, src_meta = supervised_encoder(
            cfg, data.ds, data.info, patch_size=data.patch_size, device=device, progress=progress
        )
    check_layer(cfg.layer, len(cast(Sized, enc.blocks)))
    label = f"{source_kind}:{cfg.encoder}" if source_kind != "supervised" else f"supervised:{cfg.supervised.preset}"
    meta = data.meta(
        cfg.k, label, int(cast(int, enc.embed_dim)), source=source_kind, layer=cfg.layer, grid=list(grid), **src_meta
    )
    return fit_kmeans_tokenizer(cfg, data, EncoderSource(enc, meta), meta=meta, device=device, progress=progress)


def fit_vq(cfg: TokenizerConfig, data: FitData, progress: bool = True) -> VQTokenizer:
    """Train a VQ-VAE with K codes (kmim.fit.vq)."""
    device = resolve_device(cfg.device, "tokenizer.device")
    v = cfg.vq
    hparams = {
        "vq_hidden": v.hidden,
        "vq_epochs": v.epochs,
        "vq_lr": v.lr,
        "vq_beta": v.beta,
        "vq_decay": v.decay,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
    }
    with isolated_rng(cfg.seed, device):
        vae = VQVAE(data.info.channels, data.patch_size, cfg.k, dim=v.dim, hidden=v.hidden).to(device)
        fit = train_vqvae(
            vae,
            data.ds,
            v.epochs,
            lr=v.lr,
            batch_size=cfg.batch_size,
            beta=v.beta,
            decay=v.decay,
            device=device,
            seed=cfg.seed,
            progress=progress,
        )
    meta = data.meta(cfg.k, "vq-vae", v.dim, **hparams)
    meta.stamp(fit)
    return VQTokenizer(meta, vae.cpu().eval())


__all__ = ["fit_features", "fit_hog", "fit_kmeans_tokenizer", "fit_pixels", "fit_vq"]
