"""Typed run configuration: dataclasses, YAML presets (`configs/`), dotted CLI overrides (`train.epochs=5`).

Resolution order: dataclass defaults < saved config < YAML file < overrides. Unknown keys and ill-typed values are
refused by OmegaConf, out-of-range values and unknown choices by `validate`, each with one line naming the field,
the bad value and what is valid. Names that live in registries (dataset, model preset, tokenizer) and constraints
across fields are checked one layer up, in `kmim.resolve`. The resolved config is saved in every run directory and
checkpoint.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kmim.errors import KmimError

# choices of the enum-like fields; the modules that act on them import these tuples
AUGS = ("rrc", "crop", "none")
CACHES = ("none", "ram")
INITS = ("kmeans++", "random")
TARGETS = ("tokens", "pixels", "online-clusters")
DECODERS = ("mae", "cross")
HEADS = ("linear", "cosine")
AMPS = ("auto", "bf16", "fp16", "off")
POOLS = ("cls", "mean")
FINETUNE_POOLS = ("avg", "token")
PROBES = ("adamw", "lars", "attentive")
WANDB_MODES = ("offline", "online")
DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")


# ---- checks ------------------------------------------------------------------------------------------------------


def _at_least(lo: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= lo else f"must be >= {lo:g}"


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be > 0"


def _in_range(lo: float, hi: float, lo_open: bool = False, *, hi_open: bool = True) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        return None if ok else f"must be in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    return check


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def _device(v: Any) -> str | None:
    return None if DEVICE_RE.fullmatch(str(v)) else "must be auto, cpu, cuda or cuda:N"


def _non_empty(v: Any) -> str | None:
    return None if str(v).strip() and "/" not in str(v) else "must be a non-empty name without '/'"


def _optional_at_least_1(v: Any) -> str | None:
    return None if v is None or v >= 1 else "must be >= 1 (or unset for the preset's value)"


def _randaug(v: Any) -> str | None:
    ok = re.fullmatch(r"none|(rand|augmix)(-[a-z]+[\d.]*)*|originalr?|v0r?|3a", str(v))
    return None if ok else "must be none or a timm auto_augment string such as rand-m9-mstd0.5-inc1"


def _lr_list(v: Any) -> str | None:
    return None if len(v) > 0 and all(x > 0 for x in v) else "must be a non-empty list of learning rates > 0"


def _wd_list(v: Any) -> str | None:
    return None if len(v) > 0 and all(x >= 0 for x in v) else "must be a non-empty list of weight decays >= 0"


# field path -> check returning None (valid) or what is wrong; every numeric or enum field is listed

Check = Callable[[Any], str | None]


@dataclass
class DataConfig:
    name: str = "mnist5k"  # registry name: mnist5k | imagenette | imagefolder | cifar10 | cifar100 | synthetic
    root: str | None = None  # local folder for imagefolder / cifar*; never downloaded
    class_list: str | None = None  # imagefolder: a named class list data.root should hold (in100: the paper's
    # ImageNet-100, CMC's subset; kmim.data.subsets); other classes are warned about in one line
    img_size: int = 32  # side of the square model input; mnist5k's 28x28 digits are padded with background
    aug: str = "crop"  # pretraining augmentation: rrc (RandomResizedCrop, the paper's) | crop (pad+random crop) | none
    crop_scale_min: float = 0.2  # lower bound of RandomResizedCrop's area scale (MAE / K-MIM use 0.2)
    crop_pad: int = 2  # padding for aug=crop
    hflip: bool = False  # random horizontal flip (on for natural images, off for digits)
    num_workers: int = 0  # DataLoader workers; 0 keeps everything in the main process
    cache: str = "none"  # imagefolder / imagenette: none (decode the JPEGs every epoch) | ram (decode each split once
    # into a uint8 buffer the workers share: same views, no decoding; 3*H*W bytes per image, for small datasets)
    prefetch_factor: int = 2  # batches each worker prepares ahead (with num_workers > 0)
    synthetic_per_class: int = 24  # images per class and split for data.name=synthetic
    synthetic_classes: int = 4

    CHECKS: ClassVar[dict[str, Check]] = {
        "img_size": _at_least(1),
        "aug": _one_of(AUGS),
        "crop_scale_min": _in_range(0, 1, lo_open=True, hi_open=False),
        "crop_pad": _at_least(0),
        "num_workers": _at_least(0),
        "cache": _one_of(CACHES),
        "prefetch_factor": _at_least(1),
        "synthetic_per_class": _at_least(1),
        "synthetic_classes": _at_least(2),
    }


@dataclass
class HOGConfig:
    """kmeans-hog: the HOG descriptor of a patch."""

    cells: int = 2  # cells per patch side (cell side = patch_size / cells)
    bins: int = 9  # unsigned orientation bins over 0-180 degrees

    CHECKS: ClassVar[dict[str, Check]] = {
        "cells": _at_least(1),
        "bins": _at_least(2),
    }


@dataclass
class SupervisedConfig:
    """kmeans-features with encoder=supervised: the labelled encoder kmim trains first."""

    preset: str = "mnist-tiny"  # model preset of the encoder (its patch size is the MIM's)
    epochs: int = 10  # epochs on the labelled training split
    lr: float = 1e-3  # peak AdamW learning rate (warmup, then cosine)
    patch_drop: float = 0.5  # fraction of patch tokens dropped while training

    CHECKS: ClassVar[dict[str, Check]] = {
        "epochs": _at_least(1),
        "lr": _positive,
        "patch_drop": _in_range(0, 1),
    }


@dataclass
class VQConfig:
    """vq: the VQ-VAE tokenizer."""

    dim: int = 32  # code vector dimension
    hidden: int = 64  # hidden width of the VQ-VAE encoder and decoder
    epochs: int = 10  # training epochs on the training split
    lr: float = 1e-3  # peak AdamW learning rate (warmup, then cosine)
    beta: float = 0.25  # commitment loss weight
    decay: float = 0.9  # EMA decay of the codebook updates (short runs: 0.99 leaves stale codes alive)

    CHECKS: ClassVar[dict[str, Check]] = {
        "dim": _at_least(1),
        "hidden": _at_least(1),
        "epochs": _at_least(1),
        "lr": _positive,
        "beta": _at_least(0),
        "decay": _in_range(0, 1, lo_open=True),
    }


@dataclass
class TokenizerConfig:
    name: str = "kmeans-pixels"  # registry name of the tokenizer (kmim.fit.TOKENIZERS)
    k: int = 200  # codebook size
    path: str | None = None  # a fitted tokenizer file; when unset, pretraining fits one and saves it in the run dir
    seed: int = 0
    # K-means (every kmeans-* tokenizer and the class-wise / cross-class oracles)
    niter: int = 20  # K-means iterations
    init: str = "kmeans++"  # kmeans++ | random
    max_points_per_centroid: int = 1024  # fit on a seeded sample of at most k * this many patches (256 cost 3-4 %
    # inertia over all patches against a fit on every patch; 1024 costs under 1 %: docs/benchmarks.md)
    fit_images: int = 0  # extract features for K-means from a seeded subset of this many training images; 0 = all
    # pixel feature source (kmeans-pixels, oracles, random)
    patch_norm: bool = False  # standardize each patch before clustering and encoding
    # learned and feature tokenizers (kmeans-features, kmeans-hog, vq)
    device: str = "auto"  # where feature extraction and tokenizer training run: auto | cpu | cuda | cuda:N
    batch_size: int = 64  # images per batch for feature extraction and for supervised / VQ-VAE training
    encoder: str | None = None  # kmeans-features: a timm model name, a kmim run dir / checkpoint, or "supervised"
    encoder_weights: str | None = None  # local weights file for a timm encoder; unset = timm hub download
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model kwargs (e.g. depth)
    layer: int = -1  # encoder block whose patch tokens are clustered: -1 = last block after the final norm
    hog: HOGConfig = field(default_factory=HOGConfig)
    supervised: SupervisedConfig = field(default_factory=SupervisedConfig)
    vq: VQConfig = field(default_factory=VQConfig)

    CHECKS: ClassVar[dict[str, Check]] = {
        "k": _at_least(2),
        "seed": _at_least(0),
        "niter": _at_least(1),
        "init": _one_of(INITS),
        "max_points_per_centroid": _at_least(1),
        "fit_images": _at_least(0),
        "device": _device,
        "batch_size": _at_least(1),
        "layer": _at_least(-1),
    }


@dataclass
class ModelConfig:
    preset: str = "mnist-tiny"  # registry name: mnist-tiny | vit-s16 | vit-b16; fields set below override it
    patch_size: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    decoder_dim: int | None = None
    decoder_depth: int | None = None
    decoder_heads: int | None = None
    decoder: str = "mae"  # mae: MAE's decoder (self-attention over visible and mask tokens) | cross: a cross-attention
    # predictor (CrossMAE, CAPI): mask-token queries at the predicted positions attend to the encoder output only
    # (CAPI's: as wide as the encoder, about half as deep; set decoder_dim / decoder_depth for it)
    predict_fraction: float = 1.0  # share of the masked patches predicted, a random subset (CAPI 0.05, CrossMAE's
    # example 1/3): the loss reads these only; every target (tokens, pixels, online) works with either decoder
    head: str = "linear"  # the predictor's last layer: linear (MAE's) | cosine (CAPI's student head: L2-normalised
    # input, weight-normed linear without bias, so the logits are cosines in [-1, 1] before train.online.student_temp;
    # online-clusters only; the online presets' choice)

    CHECKS: ClassVar[dict[str, Check]] = {
        "patch_size": _optional_at_least_1,
        "embed_dim": _optional_at_least_1,
        "depth": _optional_at_least_1,
        "num_heads": _optional_at_least_1,
        "decoder_dim": _optional_at_least_1,
        "decoder_depth": _optional_at_least_1,
        "decoder_heads": _optional_at_least_1,
        "decoder": _one_of(DECODERS),
        "predict_fraction": _in_range(0, 1, lo_open=True, hi_open=False),
        "head": _one_of(HEADS),
    }


@dataclass
class OnlineConfig:
    """train.target=online-clusters: CAPI's online clustering targets (facebookresearch/capi, model.py and
    default_pretrain_config.yaml). K is tokenizer.k and the prototypes' init seed tokenizer.seed."""

    target_temp: float = 0.06  # temperature of the teacher's scores going into Sinkhorn-Knopp (CAPI)
    pred_temp: float = 0.12  # temperature of the prototypes' own clustering loss (CAPI)
    student_temp: float = 0.12  # temperature of the student's prediction (CAPI)
    sinkhorn_iters: int = 3  # position-wise Sinkhorn-Knopp iterations (CAPI)
    momentum: float = 0.999  # teacher EMA momentum (CAPI's base value): linear from 1.0 to this over
    # train.warmup_epochs, then a cosine from it towards 1.0 (CAPI's schedule), cut at momentum_truncate
    momentum_truncate: float = 0.8  # the cosine runs over the rest of training / this and stops at its end (CAPI's
    # truncation at 0.8 of its length: the teacher ends at ~0.9999 and keeps moving); 1.0 = the full cosine, reaching
    # exactly 1.0 at the last step (kmim's schedule before 2026-12-07, kept by runs saved without this key)
    positionwise_sk: bool = True  # Sinkhorn-Knopp balances the prototypes per patch position over the batch
    # (CAPI's default); false: once over all patches of the global batch (CAPI's positionwise_sk=False)
    proto_lr: float = 5e-4  # peak lr of the prototypes' AdamW (absolute, CAPI's 5e-4), on train's warmup + cosine
    proto_weight_decay: float = 0.01  # CAPI's clustering AdamW sets only betas: torch's default weight decay

    CHECKS: ClassVar[dict[str, Check]] = {
        "target_temp": _positive,
        "pred_temp": _positive,
        "student_temp": _positive,
        "sinkhorn_iters": _at_least(1),
        "momentum": _in_range(0, 1, hi_open=False),
        "momentum_truncate": _in_range(0, 1, lo_open=True, hi_open=False),
        "proto_lr": _positive,
        "proto_weight_decay": _at_least(0),
    }


@dataclass
class ScheduleConfig:
    """What `train:` and `finetune:` share, each with its own defaults: the budget, the global batch, the lr
    schedule, precision, seeding, checkpoints and logging (the same YAML paths under either section)."""

    epochs: int = 40
    warmup_epochs: int = 3
    batch_size: int = 128  # the GLOBAL batch: images per optimizer step, summed over processes and accumulation
    micro_batch_size: int = 0  # most images one process puts through the model at once (GPU memory); the
    # accumulation steps follow (kmim.config.plan_batch); 0 = batch_size / processes, no accumulation
    base_lr: float = 1e-3  # lr = base_lr * batch_size / 256 (pretraining: the paper code's default; MAE 1.5e-4)
    min_lr: float = 0.0
    weight_decay: float = 0.05
    seed: int = 0
    amp: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 (with a GradScaler) | off
    save_every: int = 5  # epochs between numbered checkpoints (checkpoints/checkpoint-NNNN.pt)
    keep_checkpoints: int = 0  # numbered checkpoints kept, the newest (older ones deleted as new ones are written);
    # 0 = all (a study's curves read them all; an IN-1k ViT-B run saving every 20 epochs writes ~107 GB of them)
    last_every: int = 1  # epochs between writes of checkpoints/last.pt (and at every numbered one and the end): a
    # kill loses at most this many epochs; rank 0 writes while the others wait (ViT-B: 1.3 GB, 3.7 s measured on CPU)
    log_every: int = 20  # optimizer steps between metrics.jsonl rows (and log lines when stderr is not a terminal)
    sync_every: int = 1  # optimizer steps between host reads of the loss (the NaN guard): 1 = every micro-batch,
    # checked before it reaches the weights; N = on the device in between, read every N steps and at each epoch's
    # end (a non-finite loss still never reaches a checkpoint); log_every must be a multiple of it

    CHECKS: ClassVar[dict[str, Check]] = {
        "epochs": _at_least(1),
        "warmup_epochs": _at_least(0),
        "batch_size": _at_least(1),
        "micro_batch_size": _at_least(0),
        "base_lr": _positive,
        "min_lr": _at_least(0),
        "weight_decay": _at_least(0),
        "seed": _at_least(0),
        "amp": _one_of(AMPS),
        "save_every": _at_least(1),
        "keep_checkpoints": _at_least(0),
        "last_every": _at_least(1),
        "log_every": _at_least(1),
        "sync_every": _at_least(1),
    }


@dataclass
class TrainConfig(ScheduleConfig):
    """`train:`: pretraining, the schedule (ScheduleConfig) plus the target and AdamW's betas."""

    target: str = "tokens"  # tokens (K-MIM: cross-entropy on token ids) | pixels (MAE: MSE on pixels) |
    # online-clusters (CAPI-style: soft Sinkhorn assignments of an EMA teacher's features to learned prototypes)
    norm_pix: bool = True  # for target=pixels: per-patch normalized pixel targets (MAE's norm_pix_loss)
    label_smoothing: float = 0.0
    mask_ratio: float = 0.75
    beta1: float = 0.9
    beta2: float = 0.95
    health_images: int = 0  # > 0: every epoch, TCAS / NMI / usage of the targets' hard ids (the tokenizer's, or the
    # online prototypes' argmax) on a fixed seeded subset of this many training images (eval view); 0 = off
    online: OnlineConfig = field(default_factory=OnlineConfig)

    CHECKS: ClassVar[dict[str, Check]] = {
        **ScheduleConfig.CHECKS,
        "target": _one_of(TARGETS),
        "label_smoothing": _in_range(0, 1),
        "mask_ratio": _in_range(0, 1, lo_open=True),
        "beta1": _in_range(0, 1),
        "beta2": _in_range(0, 1),
        "health_images": _at_least(0),
    }


@dataclass
class FinetuneConfig(ScheduleConfig):
    """`kmim finetune`: end-to-end fine-tuning with the MAE/BEiT recipe (timm's layer decay, RandAugment, random
    erasing, Mixup/CutMix, label smoothing, drop path, EMA). Defaults: MAE's ViT-B recipe (100 epochs, blr 5e-4,
    layer decay 0.65, drop path 0.1, mixup 0.8, cutmix 1.0, smoothing 0.1, RandAug m9, reprob 0.25)."""

    epochs: int = 100
    warmup_epochs: int = 5
    base_lr: float = 5e-4
    min_lr: float = 1e-6
    save_every: int = 10
    layer_decay: float = 0.65  # lr scale of block i = layer_decay ** (depth + 1 - i) (timm param_groups_layer_decay)
    drop_path: float = 0.1
    mixup: float = 0.8  # Mixup alpha; 0 = off
    cutmix: float = 1.0  # CutMix alpha; 0 = off
    mixup_prob: float = 1.0  # probability of applying Mixup or CutMix to a batch
    smoothing: float = 0.1  # label smoothing
    randaug: str = "rand-m9-mstd0.5-inc1"  # timm auto_augment string; "none" = off
    reprob: float = 0.25  # random erasing probability (pixel mode)
    crop_scale_min: float = 0.08  # RandomResizedCrop scale lower bound
    hflip: float = 0.5  # horizontal flip probability (0 for digits)
    pool: str = "avg"  # avg (mean of patch tokens + fc_norm, MAE's global_pool) | token (CLS)
    ema: bool = False  # keep an EMA of the weights (timm ModelEmaV3) and report its top-1 too
    ema_decay: float = 0.9999
    holdout: float = 0.0  # > 0: train on the rest of train and evaluate on this stratified fraction of it (seeded by
    # finetune.seed) instead of the test split: for choosing a recipe without looking at the test set
    eval_every: int = 5  # epochs between test-split evaluations (the last is always done); finetune_best_top1 is
    # the best of these (MAE evaluates every epoch: eval_every=1, as the ImageNet presets)

    CHECKS: ClassVar[dict[str, Check]] = {
        **ScheduleConfig.CHECKS,
        "layer_decay": _in_range(0, 1, lo_open=True, hi_open=False),
        "drop_path": _in_range(0, 1),
        "mixup": _at_least(0),
        "cutmix": _at_least(0),
        "mixup_prob": _in_range(0, 1, hi_open=False),
        "smoothing": _in_range(0, 1),
        "reprob": _in_range(0, 1, hi_open=False),
        "randaug": _randaug,
        "crop_scale_min": _in_range(0, 1, lo_open=True, hi_open=False),
        "hflip": _in_range(0, 1, hi_open=False),
        "pool": _one_of(FINETUNE_POOLS),
        "ema_decay": _in_range(0, 1, lo_open=True),
        "eval_every": _at_least(1),
        "holdout": _in_range(0, 1),
    }


@dataclass
class RunSection:
    """`run:`: where and how a run executes and what it logs, for pretraining, fine-tuning and evaluation alike;
    nothing here changes the recipe (the device can change the last digits: CPU fp32 against bf16 on CUDA)."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    compile: bool = False  # torch.compile the model (CUDA only; ignored on CPU)
    tensorboard: bool = True  # TensorBoard event files in RUN/tensorboard (when the tensorboard package is installed)
    wandb: bool = False  # also log to Weights & Biases (pip install 'kmim[tracking]'); the run id is checkpointed
    wandb_project: str = "kmim"
    wandb_mode: str = "offline"  # offline (sync later with `wandb sync`) | online

    CHECKS: ClassVar[dict[str, Check]] = {
        "device": _device,
        "wandb_project": _non_empty,
        "wandb_mode": _one_of(WANDB_MODES),
    }


@dataclass
class KnnConfig:
    k: int = 20
    temperature: float = 0.07

    CHECKS: ClassVar[dict[str, Check]] = {
        "k": _at_least(1),
        "temperature": _positive,
    }


@dataclass
class LinearConfig:
    """eval.probe=adamw: a linear head on cached eval-view features, lr picked on a held-out 10 % of train."""

    epochs: int = 100
    batch_size: int = 256
    lrs: list[float] = field(default_factory=lambda: [1e-2, 3e-2, 1e-1, 3e-1])
    weight_decay: float = 0.0

    CHECKS: ClassVar[dict[str, Check]] = {
        "epochs": _at_least(1),
        "batch_size": _at_least(1),
        "lrs": _lr_list,
        "weight_decay": _at_least(0),
    }


@dataclass
class LarsConfig:
    """eval.probe=lars: MAE's main_linprobe (LARS, BN head, augmented crops each epoch)."""

    epochs: int = 90
    warmup_epochs: int = 10
    base_lr: float = 0.1  # lr = base_lr * batch_size / 256
    batch_size: int = 256  # the GLOBAL batch of the head's step (MAE: 16,384 = 512 x 32 GPUs)
    micro_batch_size: int = 0  # most images per process and encoder forward; 0 = batch_size / processes

    CHECKS: ClassVar[dict[str, Check]] = {
        "epochs": _at_least(1),
        "warmup_epochs": _at_least(0),
        "base_lr": _positive,
        "batch_size": _at_least(1),
        "micro_batch_size": _at_least(0),
    }


@dataclass
class AttentiveConfig:
    """eval.probe=attentive: CAPI's attentive-pooling head on the frozen patch tokens."""

    epochs: int = 20
    warmup_epochs: int = 2  # (CAPI: 10 % of the iterations, linear, then cosine to 0)
    lrs: list[float] = field(default_factory=lambda: [1e-4, 1e-3, 1e-2])  # base lrs (x batch / 256) of the heads
    # trained side by side on the same features; each with every weight decay below (CAPI's grid idea)
    weight_decays: list[float] = field(default_factory=lambda: [5e-4, 5e-2])
    holdout: float = 0.1  # the head is chosen on this stratified fraction of train (CAPI: 0.1)
    batch_size: int = 256  # the GLOBAL batch of the heads' step
    micro_batch_size: int = 0  # most images per process and encoder forward; 0 = global / processes

    CHECKS: ClassVar[dict[str, Check]] = {
        "epochs": _at_least(1),
        "warmup_epochs": _at_least(0),
        "lrs": _lr_list,
        "weight_decays": _wd_list,
        "holdout": _in_range(0, 1, lo_open=True),
        "batch_size": _at_least(1),
        "micro_batch_size": _at_least(0),
    }


@dataclass
class EvalConfig:
    pool: str = "cls"  # cls | mean (of patch tokens): which encoder feature the probes use
    batch_size: int = 256  # images per forward when extracting features
    probe: str = "adamw"  # the linear probe: adamw (eval.linear) | lars (eval.lars, MAE's) | attentive (eval.attentive)
    knn: KnnConfig = field(default_factory=KnnConfig)
    linear: LinearConfig = field(default_factory=LinearConfig)
    lars: LarsConfig = field(default_factory=LarsConfig)
    attentive: AttentiveConfig = field(default_factory=AttentiveConfig)

    CHECKS: ClassVar[dict[str, Check]] = {
        "pool": _one_of(POOLS),
        "batch_size": _at_least(1),
        "probe": _one_of(PROBES),
    }


@dataclass
class RunConfig:
    name: str = "run"
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    run: RunSection = field(default_factory=RunSection)

    CHECKS: ClassVar[dict[str, Check]] = {
        "name": _non_empty,
    }


def _collect_checks(cls: type, prefix: str = "") -> dict[str, Check]:
    """Every field's check, by dotted path: each config dataclass keeps its own fields' checks beside them (its
    CHECKS class variable; train and finetune inherit the schedule's)."""
    out = {f"{prefix}{name}": check for name, check in getattr(cls, "CHECKS", {}).items()}
    for f in fields(cls):
        factory = f.default_factory
        if factory is not MISSING and is_dataclass(factory):
            out.update(_collect_checks(cast(type, factory), f"{prefix}{f.name}."))
    return out


CHECKS: dict[str, Check] = _collect_checks(RunConfig)


def _get(cfg: Any, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _finite(v: Any) -> bool:
    return not isinstance(v, float) or math.isfinite(v)


def validate(cfg: RunConfig) -> RunConfig:
    """Check every field of CHECKS (and that floats are finite); one KmimError line for the first bad value."""
    for path, check in CHECKS.items():
        value = _get(cfg, path)
        problem = check(value) if _finite(value) else "must be a finite number"
        if problem:
            raise KmimError(f"{path}={value!r} is not valid: {problem}")
    for section in ("train", "finetune"):
        hp = getattr(cfg, section)
        if hp.log_every % hp.sync_every:
            raise KmimError(
                f"{section}.log_every={hp.log_every} is not a multiple of {section}.sync_every="
                f"{hp.sync_every}: the loss is only read every sync_every steps"
            )
        if hp.warmup_epochs > hp.epochs:
            raise KmimError(
                f"{section}.warmup_epochs={hp.warmup_epochs} is longer than {section}.epochs={hp.epochs}: lower it"
            )
    for probe in ("lars", "attentive"):
        sub = getattr(cfg.eval, probe)
        if sub.warmup_epochs > sub.epochs:
            raise KmimError(f"eval.{probe}.warmup_epochs={sub.warmup_epochs} is longer than eval.{probe}.epochs")
    return cfg


# ---- batches -----------------------------------------------------------------------------------------------------

BATCH_FIELDS = {  # plan name -> (config section, global batch field, per-process cap field)
    "train": ("train", "batch_size", "micro_batch_size"),
    "finetune": ("finetune", "batch_size", "micro_batch_size"),
    "eval": ("eval.lars", "batch_size", "micro_batch_size"),
    "attentive": ("eval.attentive", "batch_size", "micro_batch_size"),
}


@dataclass(frozen=True)
class BatchPlan:
    """How a global batch is split: `world` processes x `accum` micro-steps x `micro` images = `global_batch`."""

    global_batch: int
    world: int
    micro: int  # images per process and forward pass
    accum: int  # micro-steps per optimizer step

    def describe(self) -> str:
        return f"global batch {self.global_batch} = {self.micro} x {self.accum} accum x {self.world} processes"


def plan_batch(cfg: RunConfig, section: str, world: int) -> BatchPlan:
    """Split the global batch of `section` (train, finetune or eval's LARS probe) over `world` processes: each
    process takes global / world images per step, in the fewest micro-steps of equal size that respect the
    per-process cap (the micro-step count divides the per-process share). One KmimError line when the global batch
    cannot be split evenly over the processes."""
    section, batch_field, cap_field = BATCH_FIELDS[section]
    hp: Any = cfg
    for part in section.split("."):
        hp = getattr(hp, part)
    total, cap = getattr(hp, batch_field), getattr(hp, cap_field)
    if total % world:
        raise KmimError(
            f"{section}.{batch_field}={total} is the global batch and does not split evenly over {world} processes: "
            f"use a multiple of {world} or another number of processes"
        )
    per = total // world
    accum = next(a for a in range(max(1, -(-per // cap) if cap else 1), per + 1) if per % a == 0)
    return BatchPlan(total, world, per // accum, accum)


# ---- loading -----------------------------------------------------------------------------------------------------

# flat tokenizer keys of configs saved before the per-kind sub-configs (kmim 0.1.0) -> their new place
LEGACY_KEYS = {
    **{f"hog_{k}": f"hog.{k}" for k in ("cells", "bins")},
    **{f"supervised_{k}": f"supervised.{k}" for k in ("preset", "epochs", "lr", "patch_drop")},
    **{f"vq_{k}": f"vq.{k}" for k in ("dim", "hidden", "epochs", "lr", "beta", "decay")},
}


def _migrate_accum(raw: dict[str, Any]) -> dict[str, Any]:
    """Configs saved before the global batch (kmim <= 0.1, one process): batch_size was per process and
    accum_steps a setting; their global batch is batch_size * accum_steps and the old batch the per-process cap."""
    out = dict(raw)
    for section in ("train", "finetune"):
        hp = out.get(section)
        if isinstance(hp, dict) and "accum_steps" in hp:
            hp = dict(hp)
            accum, batch = hp.pop("accum_steps"), hp.get("batch_size", 128)
            if accum != 1:
                hp.update(batch_size=batch * accum, micro_batch_size=batch)
            out[section] = hp
    return out


MOVED_TO_RUN = ("device", "compile", "tensorboard", "wandb", "wandb_project", "wandb_mode")  # train.X -> run.X
# (2026-12-07, issue 30): what never changes the recipe has its own section


EVAL_MOVED = {  # eval.X -> eval.<sub>.<y> (2026-12-07, issue 30): each probe's settings in its own sub-section
    **{f"knn_{k}": f"knn.{k}" for k in ("k", "temperature")},
    **{f"probe_{k}": f"linear.{k}" for k in ("epochs", "batch_size", "lrs", "weight_decay")},
    **{f"lars_{k}": f"lars.{k}" for k in ("epochs", "warmup_epochs", "base_lr", "batch_size", "micro_batch_size")},
    **{
        f"attentive_{k}": f"attentive.{k}"
        for k in ("epochs", "warmup_epochs", "lrs", "weight_decays", "holdout", "batch_size", "micro_batch_size")
    },
}


def _migrate_eval(raw: dict[str, Any]) -> dict[str, Any]:
    """eval.knn_k, eval.probe_*, eval.lars_*, eval.attentive_* of configs written before the sub-sections."""
    ev = raw.get("eval")
    if not isinstance(ev, dict) or not any(k in EVAL_MOVED for k in ev):
        return raw
    out: dict[str, Any] = {}
    for key, value in ev.items():
        if key in EVAL_MOVED:
            sub, name = EVAL_MOVED[key].split(".")
            out.setdefault(sub, {})
            out[sub] = {**out[sub], name: value}
        else:
            out[key] = value if not isinstance(value, dict) else {**out.get(key, {}), **value}
    return {**raw, "eval": out}


def _migrate_run(raw: dict[str, Any]) -> dict[str, Any]:
    """train.device / compile / tensorboard / wandb* of configs written before the run: section, moved there."""
    train = raw.get("train")
    if not isinstance(train, dict) or not any(k in train for k in MOVED_TO_RUN):
        return raw
    run = dict(raw.get("run") or {})
    kept = {k: v for k, v in train.items() if k not in MOVED_TO_RUN}
    for k in MOVED_TO_RUN:
        if k in train:
            run.setdefault(k, train[k])
    return {**raw, "train": kept, "run": run}


def migrate_legacy(raw: Any) -> Any:
    """A saved or YAML config dict with the old flat tokenizer keys moved into their sub-configs, the old
    per-process batch with accumulation turned into the global batch, and the settings that moved to `run:`
    moved there."""
    if isinstance(raw, dict):
        raw = _migrate_eval(_migrate_run(_migrate_accum(raw)))
    tok = raw.get("tokenizer") if isinstance(raw, dict) else None
    if not isinstance(tok, dict) or not any(k in LEGACY_KEYS for k in tok):
        return raw
    new_tok: dict[str, Any] = {}
    for key, value in tok.items():
        group, _, sub = cast(str, LEGACY_KEYS.get(key, key)).partition(".")
        if sub:
            new_tok.setdefault(group, {})[sub] = value
        else:
            new_tok[key] = value
    return {**raw, "tokenizer": new_tok}


def _merge(base: Any, update: Any, where: str) -> Any:
    try:
        return OmegaConf.merge(base, update)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise KmimError(f"{where}: bad config key or value at '{key}': {cast(str, e.msg).splitlines()[0]}") from None


def _load_yaml(p: Path) -> Any:
    if not p.is_file():
        raise KmimError(f"config file {p} does not exist: pass a YAML file such as configs/mnist5k_kmim.yaml")
    try:
        loaded = OmegaConf.to_container(OmegaConf.load(p))
    except Exception as e:
        raise KmimError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    return migrate_legacy(loaded)


def _moved(key: str) -> str | None:
    """The new path of a key that moved (train.device -> run.device, eval.lars_epochs -> eval.lars.epochs)."""
    section, _, name = key.partition(".")
    if section == "train" and name in MOVED_TO_RUN:
        return f"run.{name}"
    if section == "eval" and name in EVAL_MOVED:
        return f"eval.{EVAL_MOVED[name]}"
    return None


def _override(item: str) -> Any:
    if "=" not in item:
        raise KmimError(f"override {item!r} is not of the form section.key=value (e.g. train.epochs=5)")
    key = item.split("=", 1)[0]
    if key in ("train.accum_steps", "finetune.accum_steps"):
        section = key.split(".")[0]
        raise KmimError(
            f"override {item!r}: {section}.batch_size is now the global batch and the accumulation follows from "
            f"it; set {section}.micro_batch_size=N to cap the images per process and step"
        )
    old = key.removeprefix("tokenizer.")
    if key.startswith("tokenizer.") and old in LEGACY_KEYS:
        raise KmimError(f"override {item!r}: {key} was renamed tokenizer.{LEGACY_KEYS[old]}")
    new = _moved(key)
    if new is not None:
        if os.environ.get("RANK", "0") == "0":
            print(f"note: {key} is now {new} (read as {new})", file=sys.stderr)
        item = new + item[len(key) :]
    return OmegaConf.from_dotlist([item])


OLD_BEHAVIOUR = {("train", "online", "momentum_truncate"): 1.0}  # a key added with a new default: the value that
# reproduces what a config saved before it meant (its run resumes and its study continues unchanged)


def keep_old_behaviour(saved: Any) -> Any:
    """A saved config of an online-clusters run (the only target that reads them) without a key of OLD_BEHAVIOUR
    gets the key's old value, not the new default; other saved configs take the defaults, so they still equal the
    same settings written today."""
    if not isinstance(saved, dict) or (saved.get("train") or {}).get("target") != "online-clusters":
        return saved
    out = dict(saved)
    for path, value in OLD_BEHAVIOUR.items():
        node: Any = out
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                break
            node[part] = dict(node[part])
            node = node[part]
        else:
            node.setdefault(path[-1], value)
    return out


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), base: dict[str, Any] | None = None
) -> RunConfig:
    """Defaults (or a saved config `base`), then the YAML file at `path`, then `overrides` like ["train.epochs=5"];
    every value is checked (`validate`)."""
    cfg = OmegaConf.structured(RunConfig)
    if base is not None:
        cfg = _merge(cfg, keep_old_behaviour(migrate_legacy(base)), "saved config")
    if path is not None:
        cfg = _merge(cfg, _load_yaml(Path(path)), str(path))
    for item in overrides:
        cfg = _merge(cfg, _override(item), f"override {item!r}")
    return validate(OmegaConf.to_object(cfg))  # type: ignore[arg-type]


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return cast(dict[str, Any], OmegaConf.to_container(OmegaConf.structured(cfg)))


def config_to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def field_paths(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """Every leaf field of a config dataclass as a dotted path (e.g. 'train.epochs')."""
    out: list[str] = []
    for f in fields(cls):
        factory = f.default_factory
        if factory is not MISSING and is_dataclass(factory):
            out += field_paths(factory, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out
