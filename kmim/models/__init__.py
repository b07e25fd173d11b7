"""Model presets and builders. Encoders are timm `VisionTransformer`s; see `encoder_spec` for loading with timm."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, cast

import timm
from torch import nn

from kmim.config import ModelConfig
from kmim.errors import KmimError
from kmim.models.mim import CosineHead, CrossDecoder, MaskedImageModel, MIMDecoder, random_masking, sincos_pos_embed
from kmim.spec import EncoderSpec

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

__all__ = [
    "PRESETS",
    "EncoderSpec",
    "MaskedImageModel",
    "ModelSpec",
    "build_classifier",
    "build_encoder",
    "build_mim",
    "random_masking",
    "resolve_spec",
]


@dataclass(frozen=True)
class ModelSpec:
    timm_name: str  # a timm architecture name, used with overriding kwargs
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    decoder_dim: int
    decoder_depth: int
    decoder_heads: int
    decoder: str = "mae"  # mae (self-attention over all patches) | cross (queries attend to the encoder output only)
    predict_fraction: float = 1.0  # of the masked patches, the share the decoder predicts (and the loss reads)
    head: str = "linear"  # the decoder's last layer: linear (MAE) | cosine (CAPI's L2-normalised weight-normed head)


PRESETS: dict[str, ModelSpec] = {
    # CPU preset for mnist5k (32x32 input, 4x4 patches): 64 patches, 16 visible at mask ratio 0.75
    "mnist-tiny": ModelSpec("vit_tiny_patch16_224", 4, 128, 4, 4, 64, 1, 4),
    # the paper's ViT-S/16 (decoder 256 wide, 8 deep) and ViT-B/16 (512, 8)
    "vit-s16": ModelSpec("vit_small_patch16_224", 16, 384, 12, 6, 256, 8, 8),
    "vit-b16": ModelSpec("vit_base_patch16_224", 16, 768, 12, 12, 512, 8, 16),
}


def resolve_spec(cfg: ModelConfig) -> ModelSpec:
    """The preset named by cfg.preset with every field that cfg sets (not None) overriding it."""
    if cfg.preset not in PRESETS:
        raise KmimError(f"model.preset={cfg.preset!r} is unknown: valid presets are {', '.join(PRESETS)}")
    overrides = {k: v for k, v in asdict(cfg).items() if k != "preset" and v is not None}
    return replace(PRESETS[cfg.preset], **overrides)


def encoder_kwargs(spec: ModelSpec, img_size: int, in_chans: int) -> dict[str, Any]:
    """kwargs for `timm.create_model(spec.timm_name, **kwargs)` that rebuild our encoder exactly."""
    if img_size % spec.patch_size:
        raise KmimError(f"data.img_size={img_size} is not divisible by model.patch_size={spec.patch_size}")
    return {
        "img_size": img_size,
        "patch_size": spec.patch_size,
        "in_chans": in_chans,
        "embed_dim": spec.embed_dim,
        "depth": spec.depth,
        "num_heads": spec.num_heads,
        "num_classes": 0,
    }


def build_encoder(spec: ModelSpec, img_size: int, in_chans: int) -> VisionTransformer:
    enc = cast(
        "VisionTransformer",
        timm.create_model(spec.timm_name, pretrained=False, **encoder_kwargs(spec, img_size, in_chans)),
    )
    grid = tuple(enc.patch_embed.grid_size)
    cast(nn.Parameter, enc.pos_embed).data.copy_(sincos_pos_embed(grid, spec.embed_dim, cls_token=True))
    cast(nn.Parameter, enc.pos_embed).requires_grad_(False)  # fixed sin-cos, as in MAE
    return enc


def _mae_init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def build_mim(spec: ModelSpec, img_size: int, in_chans: int, *, out_dim: int) -> MaskedImageModel:
    """Encoder + decoder (MAE's, or the cross-attention predictor with spec.decoder=cross) with MAE's
    initialisation (a cosine head keeps CAPI's); out_dim = K (token logits) or p*p*C (pixels)."""
    enc = build_encoder(spec, img_size, in_chans)
    grid = tuple(enc.patch_embed.grid_size)
    make = CrossDecoder if spec.decoder == "cross" else MIMDecoder
    dec = make(
        spec.embed_dim,
        spec.decoder_dim,
        spec.decoder_depth,
        heads=spec.decoder_heads,
        grid=grid,
        out_dim=out_dim,
        head=spec.head,
    )
    model = MaskedImageModel(enc, dec, spec.predict_fraction)
    model.apply(_mae_init)
    w = enc.patch_embed.proj.weight
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    nn.init.normal_(cast(nn.Parameter, enc.cls_token), std=0.02)
    nn.init.normal_(dec.mask_token, std=0.02)
    if isinstance(dec.head, CosineHead):
        dec.head.reset_parameters()
    return model


def build_classifier(spec: EncoderSpec, num_classes: int, *, pool: str, drop_path: float) -> nn.Module:
    """A timm ViT for fine-tuning: the pretrained encoder's architecture with a `num_classes` head, global pool
    `avg` (mean of the patch tokens + fc_norm, MAE's global_pool) or `token` (CLS), and stochastic depth; the head
    starts at trunc_normal(std=2e-5) and zero bias, as MAE's."""
    kwargs = {**spec.timm_kwargs, "num_classes": num_classes, "global_pool": pool, "drop_path_rate": drop_path}
    model = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
    if num_classes > 0:
        nn.init.trunc_normal_(cast(nn.Linear, model.head).weight, std=2e-5)
        nn.init.zeros_(cast(nn.Linear, model.head).bias)
    return model
