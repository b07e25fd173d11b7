"""Typed run configuration: dataclasses, YAML presets (`configs/`), dotted CLI overrides (`train.epochs=5`).

Resolution order: dataclass defaults < YAML file < overrides. Unknown keys and ill-typed values are refused with
one line naming the field. The resolved config is saved in every run directory and checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kmim.errors import KmimError


@dataclass
class DataConfig:
    name: str = "mnist5k"  # registry name: mnist5k | imagefolder | cifar10 | cifar100 | synthetic
    root: str | None = None  # local folder for imagefolder / cifar*; never downloaded
    img_size: int = 32  # side of the square model input; mnist5k's 28x28 digits are padded with background
    aug: str = "crop"  # pretraining augmentation: rrc (RandomResizedCrop, the paper's) | crop (pad+random crop) | none
    crop_scale_min: float = 0.2  # lower bound of RandomResizedCrop's area scale (MAE / K-MIM use 0.2)
    crop_pad: int = 2  # padding for aug=crop
    hflip: bool = False  # random horizontal flip (on for natural images, off for digits)
    num_workers: int = 0  # DataLoader workers; 0 keeps everything in the main process
    synthetic_per_class: int = 24  # images per class and split for data.name=synthetic
    synthetic_classes: int = 4


@dataclass
class TokenizerConfig:
    name: str = "kmeans-pixels"  # registry name of the tokenizer
    k: int = 200  # codebook size
    path: str | None = None  # a fitted tokenizer file; when unset, pretraining fits one and saves it in the run dir
    niter: int = 20  # K-means iterations
    init: str = "kmeans++"  # kmeans++ | random
    max_points_per_centroid: int = 256  # fit on a seeded sample of at most k * this many patches (faiss's rule)
    patch_norm: bool = False  # standardize each patch before clustering and encoding
    seed: int = 0
    # learned and feature tokenizers (kmeans-features, kmeans-hog, vq)
    device: str = "auto"  # where feature extraction and tokenizer training run: auto | cpu | cuda | cuda:N
    batch_size: int = 64  # images per batch for feature extraction and for supervised / VQ-VAE training
    fit_images: int = 0  # extract features for K-means from a seeded subset of this many training images; 0 = all
    encoder: str | None = None  # kmeans-features: a timm model name, a kmim run dir / checkpoint, or "supervised"
    encoder_weights: str | None = None  # local weights file for a timm encoder; unset = timm hub download
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model kwargs (e.g. depth)
    layer: int = -1  # encoder block whose patch tokens are clustered: -1 = last block after the final norm
    supervised_preset: str = "mnist-tiny"  # encoder=supervised: model preset of the encoder (patch = the MIM's)
    supervised_epochs: int = 10  # encoder=supervised: epochs on the labelled training split
    supervised_lr: float = 1e-3  # encoder=supervised: peak AdamW learning rate (warmup, then cosine)
    supervised_patch_drop: float = 0.5  # encoder=supervised: fraction of patch tokens dropped while training
    hog_cells: int = 2  # kmeans-hog: cells per patch side (cell side = patch_size / hog_cells)
    hog_bins: int = 9  # kmeans-hog: unsigned orientation bins over 0-180 degrees
    vq_dim: int = 32  # vq: code vector dimension
    vq_hidden: int = 64  # vq: hidden width of the VQ-VAE encoder and decoder
    vq_epochs: int = 10  # vq: training epochs on the training split
    vq_lr: float = 1e-3  # vq: peak AdamW learning rate (warmup, then cosine)
    vq_beta: float = 0.25  # vq: commitment loss weight
    vq_decay: float = 0.9  # vq: EMA decay of the codebook updates (short runs: 0.99 leaves stale codes alive)


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


@dataclass
class TrainConfig:
    target: str = "tokens"  # tokens (K-MIM: cross-entropy on token ids) | pixels (MAE: MSE on pixels)
    norm_pix: bool = True  # for target=pixels: per-patch normalized pixel targets (MAE's norm_pix_loss)
    label_smoothing: float = 0.0
    mask_ratio: float = 0.75
    epochs: int = 40
    warmup_epochs: int = 3
    batch_size: int = 128  # per optimizer step and process, before gradient accumulation
    accum_steps: int = 1  # gradient accumulation: effective batch = batch_size * accum_steps * world size
    base_lr: float = 1e-3  # lr = base_lr * effective batch / 256 (the paper code's default; MAE published 1.5e-4)
    min_lr: float = 0.0
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.95
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | off
    save_every: int = 5  # epochs between numbered checkpoints; last.pt is written every epoch
    log_every: int = 20  # optimizer steps between metrics.jsonl rows


@dataclass
class EvalConfig:
    pool: str = "cls"  # cls | mean (of patch tokens): which encoder feature the probes use
    batch_size: int = 256
    knn_k: int = 20
    knn_temperature: float = 0.07
    probe_epochs: int = 100
    probe_batch_size: int = 256
    probe_lrs: list[float] = field(
        default_factory=lambda: [1e-2, 3e-2, 1e-1, 3e-1]
    )  # chosen on a held-out 10% of train
    probe_weight_decay: float = 0.0


@dataclass
class RunConfig:
    name: str = "run"
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def _merge(base: Any, update: Any, where: str) -> Any:
    try:
        return OmegaConf.merge(base, update)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise KmimError(f"{where}: bad config key or value at '{key}': {e.msg.splitlines()[0]}") from None


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), base: dict | None = None
) -> RunConfig:
    """Defaults (or a saved config `base`), then the YAML file at `path`, then `overrides` like ["train.epochs=5"]."""
    cfg = OmegaConf.structured(RunConfig)
    if base is not None:
        cfg = _merge(cfg, base, "saved config")
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise KmimError(f"config file {p} does not exist: pass a YAML file such as configs/mnist5k_kmim.yaml")
        try:
            loaded = OmegaConf.load(p)
        except Exception as e:
            raise KmimError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
        cfg = _merge(cfg, loaded, str(p))
    for item in overrides:
        if "=" not in item:
            raise KmimError(f"override {item!r} is not of the form section.key=value (e.g. train.epochs=5)")
        cfg = _merge(cfg, OmegaConf.from_dotlist([item]), f"override {item!r}")
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def config_to_dict(cfg: RunConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg))  # type: ignore[return-value]


def config_to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
