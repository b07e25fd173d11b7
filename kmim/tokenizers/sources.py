"""Feature sources: what a K-means tokenizer clusters, one vector per MIM patch.

A source maps dataset-normalized images (B, C, H, W) to patch features (B, L, D), patches row-major, on any device,
without gradients. Each is rebuilt from the tokenizer file's meta (`from_meta`), so a file is self-describing:

* `PixelSource` ("pixels"): the p*p*C pixel vector of each patch (MAE's layout), standardized per patch when
  meta['patch_norm'].
* `HOGSource` ("hog"): per-patch HOG descriptors (kmim.tokenizers.hog) of the [0, 1] pixels.
* `EncoderSource` ("features"): patch tokens of a frozen timm ViT (its weights are part of the tokenizer's state).
  Images are mapped back to [0, 1] pixels, gray images repeated to 3 channels when the encoder is RGB, resized
  (bicubic) to the encoder's input size and normalized with the encoder's own mean/std. Layer -1 = output of the
  last block after the final norm (timm `forward_features`), i >= 0 = output of block i before any norm (timm
  `forward_intermediates`). Prefix tokens (CLS, registers) are dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from kmim.errors import KmimError
from kmim.spec import EncoderSpec
from kmim.tokenizers.base import TokenizerMeta
from kmim.tokenizers.hog import check_hog_params, hog_descriptors
from kmim.tokenizers.patches import normalize_patches, patchify

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer


class FeatureSource(nn.Module):
    """Images (B, C, H, W) -> patch features (B, L, dim). Subclasses set `name` and implement forward/from_meta."""

    name: ClassVar[str] = ""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    @classmethod
    def from_meta(cls, meta: TokenizerMeta) -> FeatureSource:
        raise NotImplementedError

    def _norm_buffers(self, mean: list[float], std: list[float], prefix: str = "") -> None:
        """Non-persistent (1, C, 1, 1) buffers `{prefix}mean` / `{prefix}std` that follow the module's device."""
        for name, values in ((f"{prefix}mean", mean), (f"{prefix}std", std)):
            t = torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)
            self.register_buffer(name, t, persistent=False)


class PixelSource(FeatureSource):
    name = "pixels"

    def __init__(self, patch_size: int, in_chans: int, patch_norm: bool = False) -> None:
        super().__init__(patch_size**2 * in_chans)
        self.patch_size, self.patch_norm = patch_size, patch_norm

    @classmethod
    def from_meta(cls, meta: TokenizerMeta) -> PixelSource:
        return cls(meta.patch_size, meta.in_chans, bool(meta.extra.get("patch_norm")))

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        x = patchify(imgs.float(), self.patch_size)  # (B, L, p*p*C)
        return normalize_patches(x) if self.patch_norm else x


class HOGSource(FeatureSource):
    name = "hog"
    mean: torch.Tensor  # buffers set by _norm_buffers
    std: torch.Tensor

    def __init__(
        self, patch_size: int, in_chans: int, cells: int, *, bins: int, mean: list[float], std: list[float]
    ) -> None:
        check_hog_params(patch_size, cells, bins)
        super().__init__(cells**2 * in_chans * bins)
        self.patch_size, self.cells, self.bins = patch_size, cells, bins
        self._norm_buffers(mean, std)

    @classmethod
    def from_meta(cls, meta: TokenizerMeta) -> HOGSource:
        cells, bins = int(meta.extra["hog_cells"]), int(meta.extra["hog_bins"])
        return cls(meta.patch_size, meta.in_chans, cells, bins=bins, mean=_required(meta.mean), std=_required(meta.std))

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        pixels = imgs.float() * self.std + self.mean  # undo the dataset normalization
        return hog_descriptors(pixels, self.patch_size, self.cells, bins=self.bins)  # (B, L, cells^2*C*bins)


class EncoderSource(FeatureSource):
    """meta: grid, patch_size, layer, normalization (the data's) and encoder_input {size, in_chans,
    repeat_channels, mean, std}; timm_name / timm_kwargs rebuild the encoder."""

    name = "features"
    encoder: VisionTransformer  # a timm ViT with patch tokens
    data_mean: torch.Tensor  # buffers set by _norm_buffers
    data_std: torch.Tensor
    enc_mean: torch.Tensor
    enc_std: torch.Tensor

    def __init__(self, encoder: nn.Module, meta: TokenizerMeta) -> None:
        super().__init__(int(cast(int, encoder.embed_dim)))
        x = meta.extra
        if tuple(cast(Any, encoder.patch_embed).grid_size) != tuple(x["grid"]):
            raise KmimError(
                f"the encoder's patch grid is {grid_str(cast(Any, encoder.patch_embed).grid_size)}, the tokenizer's is "
                f"{grid_str(x['grid'])}: one token per patch needs equal grids"
            )
        self.encoder = cast("VisionTransformer", encoder.requires_grad_(False).eval())
        self.patch_size, self.grid, self.layer = meta.patch_size, tuple(x["grid"]), int(x["layer"])
        inp = x["encoder_input"]
        self.size, self.enc_chans, self.repeat = tuple(inp["size"]), int(inp["in_chans"]), bool(inp["repeat_channels"])
        self._norm_buffers(_required(meta.mean), _required(meta.std), "data_")
        self._norm_buffers(inp["mean"], inp["std"], "enc_")

    @classmethod
    def from_meta(cls, meta: TokenizerMeta) -> EncoderSource:
        return cls(EncoderSpec.from_dict(meta.extra).create(), meta)

    def train(self, mode: bool = True) -> EncoderSource:
        """The encoder stays frozen in eval mode whatever the tokenizer's mode."""
        super().train(mode)
        self.encoder.eval()
        return self

    def encoder_input(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) dataset-normalized -> (B, C_enc, *size) encoder-normalized."""
        (gh, gw), p = self.grid, self.patch_size
        if imgs.shape[-2] != gh * p or imgs.shape[-1] != gw * p:
            raise KmimError(
                f"kmeans-features tokenizer was fitted for {gh * p}x{gw * p} images ({gh}x{gw} patches of {p}), "
                f"got {imgs.shape[-2]}x{imgs.shape[-1]}: use the data.img_size it was fitted with or refit it"
            )
        x = imgs.float() * self.data_std + self.data_mean  # (B, C, H, W) pixels in [0, 1]
        if self.repeat:
            x = x.expand(-1, self.enc_chans, -1, -1)  # gray -> RGB
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bicubic", align_corners=False, antialias=True)
        return (x - self.enc_mean) / self.enc_std

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        x = self.encoder_input(imgs)
        if self.layer == -1:
            tokens = self.encoder.forward_features(x)  # (B, prefix + L, D), after the final norm
            return tokens[:, self.encoder.num_prefix_tokens :]
        out = cast(
            "list[torch.Tensor]",
            self.encoder.forward_intermediates(
                x, indices=[self.layer], output_fmt="NLC", intermediates_only=True, stop_early=True
            ),
        )  # [(B, L, D)], prefix tokens dropped
        return out[0]


def grid_str(grid: Any) -> str:
    return "x".join(str(int(g)) for g in grid)


SOURCES: dict[str, type[FeatureSource]] = {s.name: s for s in (PixelSource, HOGSource, EncoderSource)}


def _required(values: list[float] | None) -> list[float]:
    """A normalization every HOG or encoder tokenizer file records."""
    if values is None:
        raise KmimError("the tokenizer file records no image normalization: refit it with `kmim tokenize`")
    return values
