"""Pretraining and evaluation transforms (torchvision v2), shared by every dataset."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from PIL import Image
from timm.data import create_transform
from timm.data.auto_augment import posterize as timm_posterize
from torchvision.transforms import InterpolationMode, v2

from kmim.config import DataConfig, FinetuneConfig


def _to_float(mean: tuple[float, ...], std: tuple[float, ...]) -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def normalize_batch(imgs: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 images (B, C, H, W) -> float32 normalized, on their device: the per-image tail of the eval view
    (ToDtype(scale=True), then Normalize) applied to the batch, elementwise and in the same order, so the numbers are
    those of normalizing each image in the loader (the pretraining loader ships uint8: a quarter of the bytes)."""
    x = v2.functional.to_dtype(imgs, torch.float32, scale=True)  # (B, C, H, W)
    return cast(torch.Tensor, v2.functional.normalize(x, list(mean), list(std)))


def _fit_size(cfg: DataConfig, native: int | None) -> v2.Transform:
    """Bring an image to img_size: pad smaller fixed-size images (digits), else resize + center crop."""
    if native is not None and native <= cfg.img_size:
        return v2.CenterCrop(cfg.img_size)  # pads with zeros (background) when the image is smaller
    return v2.Compose([v2.Resize(round(cfg.img_size / 0.875), InterpolationMode.BICUBIC), v2.CenterCrop(cfg.img_size)])


def eval_transform(
    cfg: DataConfig, mean: tuple[float, ...], std: tuple[float, ...], *, native: int | None
) -> v2.Compose:
    """Deterministic view used for tokenizer fitting, feature extraction and probes."""
    return v2.Compose([_fit_size(cfg, native), *_to_float(mean, std)])


def lars_probe_transform(
    cfg: DataConfig, mean: tuple[float, ...], std: tuple[float, ...], *, native: int | None
) -> v2.Compose:
    """MAE's linear-probe training view: RandomResizedCrop of the full image (bicubic, scale 0.08-1) and a flip when
    data.hflip. Small fixed-size images (digits) are first padded to img_size, as in every other view."""
    pad = [v2.CenterCrop(cfg.img_size)] if native is not None and native < cfg.img_size else []
    crop = v2.RandomResizedCrop(cfg.img_size, interpolation=InterpolationMode.BICUBIC)
    flip = [v2.RandomHorizontalFlip()] if cfg.hflip else []
    return v2.Compose([*pad, crop, *flip, *_to_float(mean, std)])


def finetune_transform(
    cfg: DataConfig, ft: FinetuneConfig, mean: tuple[float, ...], *, std: tuple[float, ...], native: int | None
) -> v2.Compose:
    """MAE's fine-tuning view with timm's `create_transform`: RandomResizedCrop (bicubic), flip, RandAugment,
    normalization, random erasing (pixel mode). Tensor images (in-memory datasets) become PIL images first, and
    small fixed-size images (digits) are padded to img_size as for pretraining."""
    head: list[v2.Transform | Callable[..., Any]] = [v2.ToPILImage()] if native is not None else []
    if native is not None and native < cfg.img_size:
        head.append(v2.CenterCrop(cfg.img_size))
    tail = create_transform(
        cfg.img_size,
        is_training=True,
        scale=(ft.crop_scale_min, 1.0),
        hflip=ft.hflip,
        auto_augment=None if ft.randaug == "none" else ft.randaug,
        interpolation="bicubic",
        mean=tuple(mean),
        std=tuple(std),
        re_prob=ft.reprob,
        re_mode="pixel",
        re_count=1,
    )
    for t in tail.transforms:
        for op in getattr(t, "ops", ()):  # RandAugment's ops
            if op.aug_fn is timm_posterize:
                op.aug_fn = posterize
    return v2.Compose([*head, tail])


def posterize(img: Image.Image, bits_to_keep: int, **kwargs: object) -> Image.Image:
    """timm's posterize where 0 bits gives a black image, as Pillow < 11 did: timm's PosterizeIncreasing asks for 0
    bits at magnitude 10 (reached by m9 with mstd0.5), which Pillow >= 11 refuses with a ValueError."""
    if bits_to_keep <= 0:
        return img.point(lambda _: 0)
    return cast("Callable[..., Image.Image]", timm_posterize)(img, bits_to_keep, **kwargs)  # timm's is unannotated


def pretrain_transform(
    cfg: DataConfig, mean: tuple[float, ...], std: tuple[float, ...], *, native: int | None
) -> v2.Compose:
    """Augmented view seen by the encoder, as a uint8 tensor (C, H, W): the training step normalizes the batch on its
    device (`normalize_batch` with the dataset's mean and std); the tokenizer computes targets on this same view."""
    if cfg.aug == "rrc":
        ops: list[v2.Transform] = [
            v2.RandomResizedCrop(cfg.img_size, scale=(cfg.crop_scale_min, 1.0), interpolation=InterpolationMode.BICUBIC)
        ]
    elif cfg.aug == "crop":
        ops = [_fit_size(cfg, native), v2.RandomCrop(cfg.img_size, padding=cfg.crop_pad, fill=0)]
    else:
        ops = [_fit_size(cfg, native)]
    if cfg.hflip:
        ops.append(v2.RandomHorizontalFlip())
    return v2.Compose([*ops, v2.ToImage()])
