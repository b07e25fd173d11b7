"""K-MIM with feature tokenizers: K-means over the patch features of a frozen encoder (K-MIM DINO / DeiT / MAE).

The encoder comes from one of three sources, chosen by `tokenizer.encoder`:
- a timm model name (e.g. `vit_small_patch16_224.dino`, `deit_small_patch16_224`) with its pretrained weights,
  read from `tokenizer.encoder_weights` (a local file, any format timm's pretrained loader reads) or downloaded from
  the timm hub when that is unset; `tokenizer.encoder_kwargs` are passed to `timm.create_model`;
- a kmim run directory or checkpoint: our own MAE or K-MIM encoder (iterated, self-bootstrapped tokenizers cluster
  the features of the previous round's model);
- `supervised`: kmim trains a ViT of `tokenizer.supervised_preset` on the labelled training split first
  (kmim/engine/supervised.py), the DeiT analogue where no public weights exist.

Design:
- The frozen encoder lives inside the tokenizer and its weights go into the tokenizer file's state, so the file is
  self-contained; meta records the source, the timm name and kwargs that rebuild it, the weights file or checkpoint,
  the layer, the feature dim and the encoder's input (size, channels, normalization).
- One token per MIM patch: the encoder's patch grid must equal the MIM model's grid (image side / patch size).
  Images are resized (bicubic) to encoder_patch x grid, e.g. 128x128 for a /16 ViT on mnist5k's 8x8 grid. A timm
  encoder is built at that size (timm resamples its position embeddings on load); a kmim encoder has a fixed size
  and is refused with both grids named when they differ.
- Images arrive normalized with the dataset's mean/std; they are mapped back to [0, 1] pixels and normalized with
  the encoder's own (timm pretrained_cfg mean/std; the dataset's for kmim and supervised encoders).
- Channels: equal channel counts pass; a 1-channel dataset with a 3-channel timm encoder repeats the gray channel
  three times (what converting a gray image to RGB does, and what the encoder saw for gray photos in training);
  anything else is refused naming both counts.
- Layer: -1 = output of the last block after the final norm (timm `forward_features`), i in [0, depth) = output of
  block i before any norm (timm `forward_intermediates`). Patch tokens only: CLS and other prefix tokens are dropped.
- Fitting extracts features batched on `tokenizer.device` with a progress bar, from a seeded subset of
  `tokenizer.fit_images` images (0 = all), keeps a seeded sample of patches (`sample_patches`), then K-means.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.data import resolve_data_config
from torch import nn
from torch.utils.data import Dataset, Subset

from kmim.config import ModelConfig, TokenizerConfig
from kmim.engine.dist import resolve_device
from kmim.engine.supervised import train_supervised
from kmim.errors import KmimError
from kmim.eval.features import load_encoder
from kmim.models import build_encoder, encoder_kwargs, resolve_spec
from kmim.tokenizers.base import base_meta, provenance
from kmim.tokenizers.kmeans import fit_kmeans
from kmim.tokenizers.pixel import KMeansPixelTokenizer, kmeans_fit_meta, sample_patches

SOURCES = ("timm", "kmim", "supervised")


# ---- fitting helpers shared by the learned and feature tokenizers ------------------------------------------------


@contextlib.contextmanager
def isolated_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch for a tokenizer fit and restore the global RNG afterwards, so the model built next is unaffected."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def fit_subset(ds: Dataset, n: int, seed: int) -> Dataset:
    """A seeded subset of n images of ds (all of it when n is 0 or at least len(ds))."""
    if n < 0:
        raise KmimError(f"tokenizer.fit_images={n} is negative: use 0 (all images) or a positive count")
    if n == 0 or n >= len(ds):
        return ds
    idx = np.sort(np.random.default_rng(seed).choice(len(ds), size=n, replace=False))
    return Subset(ds, idx.tolist())


def fit_patch_kmeans(
    cfg: TokenizerConfig, ds: Dataset, feature_fn: Callable[[torch.Tensor], torch.Tensor], progress: bool
) -> tuple[torch.Tensor, dict[str, Any]]:
    """K-means centroids (K, D) over a seeded sample of patch features of ds, and the fit statistics for meta."""
    sub = fit_subset(ds, cfg.fit_images, cfg.seed)
    with torch.no_grad():
        x = sample_patches(sub, feature_fn, cfg.k * cfg.max_points_per_centroid, cfg.seed, cfg.batch_size, progress)
    res = fit_kmeans(x, cfg.k, cfg.niter, cfg.seed, cfg.max_points_per_centroid, cfg.init, progress)
    return torch.from_numpy(res.centroids), {**kmeans_fit_meta(cfg, res), "fit_images": len(sub)}


def mim_grid(ds: Dataset, patch_size: int) -> tuple[int, int]:
    """The MIM model's patch grid (image height / patch, image width / patch) for the images of ds."""
    h, w = ds[0][0].shape[-2:]
    if h % patch_size or w % patch_size:
        raise KmimError(f"images of {h}x{w} are not divisible by the patch size {patch_size}: change data.img_size")
    return h // patch_size, w // patch_size


# ---- the tokenizer ---------------------------------------------------------------------------------------------


class FeatureTokenizer(KMeansPixelTokenizer):
    """Token of a patch = nearest centroid (squared Euclidean) of its frozen-encoder patch feature."""

    kind = "kmeans-features"

    def __init__(self, meta: dict[str, Any], centroids: torch.Tensor, encoder: nn.Module) -> None:
        super().__init__(meta, centroids)
        if encoder.embed_dim != self.feature_dim:
            raise KmimError(
                f"the encoder's features are {encoder.embed_dim}-dim, the tokenizer's centroids are "
                f"{self.feature_dim}-dim: refit the tokenizer with this encoder"
            )
        if tuple(encoder.patch_embed.grid_size) != tuple(meta["grid"]):
            raise KmimError(
                f"the encoder's patch grid is {_grid_str(encoder.patch_embed.grid_size)}, the tokenizer's is "
                f"{_grid_str(meta['grid'])}: one token per patch needs equal grids"
            )
        self.encoder = encoder.requires_grad_(False).eval()
        inp = meta["encoder_input"]
        data = meta["normalization"]
        self._buffer("data_mean", data["mean"])
        self._buffer("data_std", data["std"])
        self._buffer("enc_mean", inp["mean"])
        self._buffer("enc_std", inp["std"])

    def _buffer(self, name: str, values: list[float]) -> None:
        self.register_buffer(name, torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    @property
    def feature_dim(self) -> int:
        return int(self.meta["feature_dim"])

    def train(self, mode: bool = True) -> FeatureTokenizer:
        """The encoder stays frozen in eval mode whatever the tokenizer's mode."""
        super().train(mode)
        self.encoder.eval()
        return self

    def encoder_input(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) dataset-normalized -> (B, C_enc, patch_enc * gh, patch_enc * gw) encoder-normalized."""
        p, (gh, gw) = self.patch_size, self.meta["grid"]
        if imgs.shape[-2] != gh * p or imgs.shape[-1] != gw * p:
            raise KmimError(
                f"kmeans-features tokenizer was fitted for {gh * p}x{gw * p} images ({gh}x{gw} patches of {p}), "
                f"got {imgs.shape[-2]}x{imgs.shape[-1]}: use the data.img_size it was fitted with or refit it"
            )
        inp = self.meta["encoder_input"]
        x = imgs.float() * self.data_std + self.data_mean  # (B, C, H, W) pixels in [0, 1]
        if inp["repeat_channels"]:
            x = x.expand(-1, inp["in_chans"], -1, -1)  # gray -> RGB
        size = tuple(inp["size"])
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
        return (x - self.enc_mean) / self.enc_std

    def features(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) dataset-normalized images -> patch features (B, L, D) of the chosen layer."""
        x = self.encoder_input(imgs)
        layer = self.meta["layer"]
        if layer == -1:
            tokens = self.encoder.forward_features(x)  # (B, prefix + L, D), after the final norm
            return tokens[:, self.encoder.num_prefix_tokens :]
        out = self.encoder.forward_intermediates(
            x, indices=[layer], output_fmt="NLC", intermediates_only=True, stop_early=True
        )  # [(B, L, D)], prefix tokens dropped
        return out[0]

    @classmethod
    def from_state(cls, meta: dict[str, Any], state: dict[str, torch.Tensor]) -> FeatureTokenizer:
        encoder = timm.create_model(meta["timm_name"], pretrained=False, **meta["timm_kwargs"])
        tok = cls(meta, state["centroids"], encoder)
        try:
            tok.load_state_dict(state)
        except RuntimeError as e:
            raise KmimError(
                f"tokenizer state does not match its encoder {meta['timm_name']}: {_first_line(e)}"
            ) from None
        return tok


# ---- encoder sources -------------------------------------------------------------------------------------------


def _grid_str(grid: Any) -> str:
    return "x".join(str(int(g)) for g in grid)


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def encoder_source(name: str | None) -> str:
    """Which source `tokenizer.encoder` names: supervised, kmim (an existing path) or timm (a model name)."""
    if not name:
        raise KmimError(
            "tokenizer.encoder is not set: kmeans-features needs a timm model name, a kmim run dir or checkpoint, "
            "or 'supervised'"
        )
    if name == "supervised":
        return "supervised"
    if Path(name).expanduser().exists():
        return "kmim"
    if timm.is_model(name):
        return "timm"
    raise KmimError(
        f"tokenizer.encoder={name!r} is neither 'supervised', an existing kmim run dir / checkpoint, "
        "nor a timm model name (see timm.list_models())"
    )


def channel_plan(enc_chans: int, data_chans: int, allow_repeat: bool) -> bool:
    """True when gray images are repeated to the encoder's 3 channels; refuses other mismatches."""
    if enc_chans == data_chans:
        return False
    if allow_repeat and data_chans == 1 and enc_chans == 3:
        return True
    raise KmimError(f"tokenizer.encoder takes {enc_chans}-channel images, the data has {data_chans} channels")


def _norm_for(values: tuple[float, ...], chans: int, what: str) -> list[float]:
    vals = [float(v) for v in values]
    if len(vals) == chans:
        return vals
    if chans == 1:
        return [sum(vals) / len(vals)]  # a gray encoder under an RGB pretrained_cfg: the mean of the channels
    raise KmimError(f"encoder {what} has {len(vals)} values for a {chans}-channel encoder")


def _check_vit(enc: nn.Module, name: str) -> None:
    if not hasattr(enc, "patch_embed") or not hasattr(enc, "forward_intermediates"):
        raise KmimError(f"tokenizer.encoder={name} is not a timm ViT with patch tokens: use a VisionTransformer")


def _create_timm(name: str, kwargs: dict[str, Any], weights: str | None) -> nn.Module:
    """timm model with pretrained weights from a local file, else downloaded from the timm hub."""
    try:
        if weights is not None:
            overlay = {"file": weights}
            return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
        return timm.create_model(name, pretrained=True, **kwargs)  # downloads the weights
    except RuntimeError as e:
        raise KmimError(
            f"tokenizer.encoder_weights={weights} does not fit timm model {name} with {kwargs}: {_first_line(e)}"
        ) from None
    except Exception as e:
        if weights is not None:
            raise KmimError(f"tokenizer.encoder_weights={weights} cannot be read: {_first_line(e)}") from None
        raise KmimError(
            f"pretrained weights of {name} could not be downloaded ({_first_line(e)}): "
            "pass a local file with tokenizer.encoder_weights=<path>"
        ) from None


def timm_encoder(cfg: TokenizerConfig, grid: tuple[int, int], data_chans: int) -> tuple[nn.Module, dict[str, Any]]:
    """A pretrained timm ViT built at encoder_patch x grid, and its meta fields."""
    name, kwargs = str(cfg.encoder), dict(cfg.encoder_kwargs)
    weights = None
    if cfg.encoder_weights:
        path = Path(cfg.encoder_weights).expanduser()
        if not path.is_file():
            raise KmimError(f"tokenizer.encoder_weights={cfg.encoder_weights} does not exist")
        weights = str(path.resolve())
    kwargs.pop("img_size", None)  # set from the grid below
    try:
        with torch.device("meta"):  # architecture only: patch size, channels, input normalization
            probe = timm.create_model(name, pretrained=False, **{**kwargs, "num_classes": 0})
    except TypeError as e:
        raise KmimError(f"tokenizer.encoder_kwargs are not accepted by timm model {name}: {_first_line(e)}") from None
    _check_vit(probe, name)
    ph, pw = probe.patch_embed.patch_size
    size = [ph * grid[0], pw * grid[1]]
    kwargs.update(img_size=size[0] if size[0] == size[1] else size, num_classes=0)
    enc_chans = probe.patch_embed.proj.in_channels
    repeat = channel_plan(enc_chans, data_chans, allow_repeat=True)
    data_cfg = resolve_data_config({}, model=probe)
    inp = {
        "size": size,
        "in_chans": enc_chans,
        "repeat_channels": repeat,
        "mean": _norm_for(data_cfg["mean"], enc_chans, "mean"),
        "std": _norm_for(data_cfg["std"], enc_chans, "std"),
    }
    enc = _create_timm(name, kwargs, weights)
    return enc, {"timm_name": name, "timm_kwargs": kwargs, "weights": weights or f"hub:{name}", "encoder_input": inp}


def _dataset_input(enc: nn.Module, info: Any) -> dict[str, Any]:
    return {
        "size": [int(s) for s in enc.patch_embed.img_size],
        "in_chans": info.channels,
        "repeat_channels": False,
        "mean": list(info.mean),
        "std": list(info.std),
    }


def kmim_encoder(cfg: TokenizerConfig, grid: tuple[int, int], info: Any) -> tuple[nn.Module, dict[str, Any]]:
    """The encoder of a kmim run or checkpoint (fixed size: its grid must equal the MIM grid) and its meta fields."""
    enc, found = load_encoder(Path(str(cfg.encoder)).expanduser())
    enc_grid = tuple(int(g) for g in enc.patch_embed.grid_size)
    if enc_grid != tuple(grid):
        size, p = enc.patch_embed.img_size[0], enc.patch_embed.patch_size[0]
        raise KmimError(
            f"tokenizer.encoder={cfg.encoder}: its patch grid is {_grid_str(enc_grid)} ({size}px, patch {p}), "
            f"the MIM model's grid is {_grid_str(grid)}: one token per patch needs equal grids"
        )
    channel_plan(enc.patch_embed.proj.in_channels, info.channels, allow_repeat=False)
    run_data = ((found.get("config") or {}).get("data") or {}).get("name")
    meta = {
        "timm_name": found["encoder"]["timm_name"],
        "timm_kwargs": dict(found["encoder"]["timm_kwargs"]),
        "weights": str(found["checkpoint"]),
        "encoder_dataset": run_data,
        "encoder_input": _dataset_input(enc, info),
    }
    return enc, meta


def supervised_encoder(
    cfg: TokenizerConfig, ds: Dataset, info: Any, patch_size: int, device: torch.device, progress: bool
) -> tuple[nn.Module, dict[str, Any]]:
    """A ViT of cfg.supervised_preset (patch = the MIM's) trained on the labelled split ds, and its meta fields."""
    h, w = ds[0][0].shape[-2:]
    if h != w:
        raise KmimError(f"encoder=supervised needs square images, got {h}x{w}: set data.img_size")
    spec = resolve_spec(ModelConfig(preset=cfg.supervised_preset, patch_size=patch_size))
    with isolated_rng(cfg.seed, device):
        enc = build_encoder(spec, h, info.channels)
        stats = train_supervised(
            enc, len(info.classes), ds, cfg.supervised_epochs, cfg.supervised_lr, cfg.batch_size, device,
            seed=cfg.seed, patch_drop=cfg.supervised_patch_drop, progress=progress,
        )  # fmt: skip
    train_cfg = {"preset": cfg.supervised_preset, "epochs": cfg.supervised_epochs, "lr": cfg.supervised_lr,
                 "patch_drop": cfg.supervised_patch_drop, "batch_size": cfg.batch_size}  # fmt: skip
    meta = {
        "timm_name": spec.timm_name,
        "timm_kwargs": encoder_kwargs(spec, h, info.channels),
        "weights": None,
        "supervised": {**train_cfg, **stats},
        "encoder_input": _dataset_input(enc, info),
    }
    return enc, meta


def _check_layer(layer: int, depth: int) -> None:
    if layer != -1 and not 0 <= layer < depth:
        raise KmimError(
            f"tokenizer.layer={layer} is not valid for an encoder of {depth} blocks: use -1 (last block, after the "
            f"final norm) or a block index 0..{depth - 1}"
        )


def fit_feature_tokenizer(
    cfg: TokenizerConfig, ds: Dataset, info: Any, patch_size: int, dataset: str, progress: bool = True
) -> FeatureTokenizer:
    """Build or load the frozen encoder named by cfg.encoder, then K-means its patch features on `ds`."""
    source = encoder_source(cfg.encoder)
    grid = mim_grid(ds, patch_size)
    device = resolve_device(cfg.device, "tokenizer.device")
    if source == "timm":
        enc, src_meta = timm_encoder(cfg, grid, info.channels)
    elif source == "kmim":
        enc, src_meta = kmim_encoder(cfg, grid, info)
    else:
        enc, src_meta = supervised_encoder(cfg, ds, info, patch_size, device, progress)
    _check_layer(cfg.layer, len(enc.blocks))
    label = f"{source}:{cfg.encoder}" if source != "supervised" else f"supervised:{cfg.supervised_preset}"
    meta = base_meta(
        cfg.k, patch_size, info, dataset, label, int(enc.embed_dim),
        source=source, layer=cfg.layer, grid=list(grid), **src_meta,
    )  # fmt: skip
    tok = FeatureTokenizer(meta, torch.zeros(cfg.k, int(enc.embed_dim)), enc).to(device)
    centroids, fit = fit_patch_kmeans(cfg, ds, lambda imgs: tok.features(imgs.to(device)).float().cpu(), progress)
    meta.update(fit=fit, **provenance())
    return FeatureTokenizer(meta, centroids, tok.encoder.cpu())


__all__ = ["SOURCES", "FeatureTokenizer", "fit_feature_tokenizer", "fit_patch_kmeans"]
