"""Frozen encoders for `kmeans-features`, chosen by `tokenizer.encoder`:

- a timm model name (e.g. `vit_small_patch16_224.dino`, `deit_small_patch16_224`) with its pretrained weights,
  read from `tokenizer.encoder_weights` (a local file, any format timm's pretrained loader reads) or downloaded from
  the timm hub when that is unset; `tokenizer.encoder_kwargs` are passed to `timm.create_model`;
- a kmim run directory or checkpoint: our own MAE or K-MIM encoder (iterated, self-bootstrapped tokenizers cluster
  the features of the previous round's model);
- `supervised`: kmim trains a ViT of `tokenizer.supervised.preset` on the labelled training split first
  (kmim/fit/supervised.py), the DeiT analogue where no public weights exist.

One token per MIM patch: the encoder's patch grid must equal the MIM model's grid (image side / patch size).
A timm encoder is built at encoder_patch x grid (timm resamples its position embeddings on load), e.g. 128x128 for
a /16 ViT on mnist5k's 8x8 grid; a kmim encoder has a fixed size and is refused with both grids named when they
differ. Channels: equal counts pass; a 1-channel dataset with a 3-channel timm encoder repeats the gray channel
(what converting a gray image to RGB does); anything else is refused naming both counts. Each builder returns the
encoder and the meta fields that `kmim.tokenizers.sources.EncoderSource` and the tokenizer file record.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import timm
import torch
from timm.data import resolve_data_config
from timm.models import load_state_dict
from torch import nn
from torch.utils.data import Dataset

from kmim.config import ModelConfig, TokenizerConfig
from kmim.errors import KmimError
from kmim.eval.features import load_encoder
from kmim.fit.supervised import train_supervised
from kmim.models import build_encoder, encoder_kwargs, resolve_spec
from kmim.tokenizers.sources import grid_str

SOURCES = ("timm", "kmim", "supervised")


@contextlib.contextmanager
def isolated_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch for a tokenizer fit and restore the global RNG afterwards, so the model built next is unaffected."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def mim_grid(ds: Dataset[Any], patch_size: int) -> tuple[int, int]:
    """The MIM model's patch grid (image height / patch, image width / patch) for the images of ds."""
    h, w = ds[0][0].shape[-2:]
    if h % patch_size or w % patch_size:
        raise KmimError(f"images of {h}x{w} are not divisible by the patch size {patch_size}: change data.img_size")
    return h // patch_size, w // patch_size


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
    """timm model with pretrained weights from a local file (loaded strictly), else downloaded from the timm hub."""
    try:
        if weights is None:
            return timm.create_model(name, pretrained=True, **kwargs)  # downloads the weights
        model = timm.create_model(name, pretrained=False, **kwargs)
        state = load_state_dict(weights)  # plain, {'state_dict': ...} / {'model': ...} wrappers, safetensors
    except Exception as e:
        if weights is not None:
            raise KmimError(f"tokenizer.encoder_weights={weights} cannot be read: {_first_line(e)}") from None
        raise KmimError(
            f"pretrained weights of {name} could not be downloaded ({_first_line(e)}): "
            "pass a local file with tokenizer.encoder_weights=<path>"
        ) from None
    _load_strictly(model, state, weights, name=name, kwargs=kwargs)
    return model


def _load_strictly(model: nn.Module, state: dict[str, Any], weights: str, *, name: str, kwargs: dict[str, Any]) -> None:
    """Load `state` through the architecture's timm checkpoint filter (position-embedding resampling, format
    conversion); every encoder weight must be there (a classifier head is not needed, extra keys are ignored)."""
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    try:
        if filter_fn is not None:
            state = filter_fn(state, model)
        missing = model.load_state_dict(state, strict=False).missing_keys
    except RuntimeError as e:
        raise KmimError(
            f"tokenizer.encoder_weights={weights} does not fit timm model {name} with {kwargs}: {_first_line(e)}"
        ) from None
    missing = [k for k in missing if not k.startswith(("head.", "fc_norm.", "head_drop."))]
    if missing:
        n = len(model.state_dict())
        raise KmimError(
            f"tokenizer.encoder_weights={weights} matches only {n - len(missing)} of the {n} weights of timm model "
            f"{name} (missing e.g. {', '.join(missing[:3])}): pass weights saved from that architecture"
        )


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
    ph, pw = cast(Any, probe.patch_embed).patch_size
    size = [ph * grid[0], pw * grid[1]]
    kwargs.update(img_size=size[0] if size[0] == size[1] else size, num_classes=0)
    enc_chans = cast(Any, probe.patch_embed).proj.in_channels
    repeat = channel_plan(enc_chans, data_chans, allow_repeat=True)
    data_cfg = cast("Callable[..., dict[str, Any]]", resolve_data_config)({}, model=probe)  # timm: unannotated
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
        "size": [int(s) for s in cast(Any, enc.patch_embed).img_size],
        "in_chans": info.channels,
        "repeat_channels": False,
        "mean": list(info.mean),
        "std": list(info.std),
    }


def kmim_encoder(cfg: TokenizerConfig, grid: tuple[int, int], info: Any) -> tuple[nn.Module, dict[str, Any]]:
    """The encoder of a kmim run or checkpoint (fixed size: its grid must equal the MIM grid) and its meta fields."""
    enc, found = load_encoder(Path(str(cfg.encoder)).expanduser())
    enc_grid = tuple(int(g) for g in cast(Any, enc.patch_embed).grid_size)
    if enc_grid != tuple(grid):
        size, p = cast(Any, enc.patch_embed).img_size[0], cast(Any, enc.patch_embed).patch_size[0]
        raise KmimError(
            f"tokenizer.encoder={cfg.encoder}: its patch grid is {grid_str(enc_grid)} ({size}px, patch {p}), "
            f"the MIM model's grid is {grid_str(grid)}: one token per patch needs equal grids"
        )
    channel_plan(cast(Any, enc.patch_embed).proj.in_channels, info.channels, allow_repeat=False)
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
    cfg: TokenizerConfig, ds: Dataset[Any], info: Any, *, patch_size: int, device: torch.device, progress: bool
) -> tuple[nn.Module, dict[str, Any]]:
    """A ViT of cfg.supervised.preset (patch = the MIM's) trained on the labelled split ds, and its meta fields."""
    h, w = ds[0][0].shape[-2:]
    if h != w:
        raise KmimError(f"encoder=supervised needs square images, got {h}x{w}: set data.img_size")
    sup = cfg.supervised
    spec = resolve_spec(ModelConfig(preset=sup.preset, patch_size=patch_size))
    with isolated_rng(cfg.seed, device):
        enc = build_encoder(spec, h, info.channels)
        stats = train_supervised(
            enc,
            len(info.classes),
            ds,
            epochs=sup.epochs,
            lr=sup.lr,
            batch_size=cfg.batch_size,
            device=device,
            seed=cfg.seed,
            patch_drop=sup.patch_drop,
            progress=progress,
        )
    train_cfg = {
        "preset": sup.preset,
        "epochs": sup.epochs,
        "lr": sup.lr,
        "patch_drop": sup.patch_drop,
        "batch_size": cfg.batch_size,
    }
    meta = {
        "timm_name": spec.timm_name,
        "timm_kwargs": encoder_kwargs(spec, h, info.channels),
        "weights": None,
        "supervised": {**train_cfg, **stats},
        "encoder_input": _dataset_input(enc, info),
    }
    return enc, meta


def check_layer(layer: int, depth: int) -> None:
    if layer != -1 and not 0 <= layer < depth:
        raise KmimError(
            f"tokenizer.layer={layer} is not valid for an encoder of {depth} blocks: use -1 (last block, after the "
            f"final norm) or a block index 0..{depth - 1}"
        )
