"""K-MIM HOG: K-means over per-patch HOG descriptors (discretized MaskFeat targets).

HOG (Dalal & Triggs 2005; MaskFeat, Wei et al. 2022) per MIM patch: central-difference gradients of the pixel image,
unsigned orientations binned into `bins` bins over [0, 180) degrees and weighted by the gradient magnitude, summed
over each cell (cells x cells cells per patch), and the whole patch descriptor L2-normalized (one normalization block
= one patch, as MaskFeat normalizes per patch). The descriptor of a patch has cells^2 * C * bins entries, channels
kept apart as in MaskFeat. Differences from skimage's `feature.hog`: linear (soft) vote into the two nearest
orientation bins instead of a hard vote, because a cell of a small patch (2x2 pixels on mnist5k) has only a few
pixels and hard votes make near-identical patches land in different clusters; no Gaussian window and no L2-Hys
clipping. The computation is vectorised torch (one pass per batch, any device) rather than skimage, which is
per-image Python and would run inside the training step, where targets are computed on every augmented batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kmim.errors import KmimError

# Normalization floor, in units of [0, 1]-pixel gradients: a patch whose summed gradient magnitude is well below
# 1/100 of one full-contrast edge pixel (sensor or JPEG noise) stays near zero instead of being blown up to norm 1.
HOG_EPS = 1e-2


def orientation_histogram(gx: torch.Tensor, gy: torch.Tensor, bins: int) -> torch.Tensor:
    """Per-pixel soft orientation votes: gx, gy (B, C, H, W) -> (B, C, bins, H, W).

    theta = atan2(gy, gx) mod pi; bin i is centred at i * pi / bins (circular). With t = theta / (pi / bins),
    bin floor(t) gets |g| * (1 - frac(t)) and bin floor(t) + 1 (mod bins) gets |g| * frac(t).
    """
    mag = torch.hypot(gx, gy)  # (B, C, H, W)
    t = torch.remainder(torch.atan2(gy, gx), math.pi) / (math.pi / bins)  # (B, C, H, W) in [0, bins]
    lo = torch.floor(t)
    frac = t - lo
    lo = lo.long() % bins
    hist = gx.new_zeros(*gx.shape[:2], bins, *gx.shape[2:])  # (B, C, bins, H, W)
    hist.scatter_add_(2, lo.unsqueeze(2), (mag * (1 - frac)).unsqueeze(2))
    hist.scatter_add_(2, ((lo + 1) % bins).unsqueeze(2), (mag * frac).unsqueeze(2))
    return hist


def hog_descriptors(
    pixels: torch.Tensor, patch_size: int, cells: int, *, bins: int, eps: float = HOG_EPS
) -> torch.Tensor:
    """(B, C, H, W) pixel images -> per-patch HOG (B, L, cells*cells*C*bins), patches row-major.

    Gradients: gx = I(x+1) - I(x-1), gy = I(y+1) - I(y-1), borders replicated. Cell histogram = sum of the
    votes of its pixels. Descriptor v of a patch, laid out (cell row, cell col, channel, bin), is returned as
    v / sqrt(||v||^2 + eps^2).
    """
    b, c, h, w = pixels.shape
    cell = patch_size // cells
    x = F.pad(pixels.float(), (1, 1, 1, 1), mode="replicate")  # (B, C, H+2, W+2)
    gx = x[..., 1:-1, 2:] - x[..., 1:-1, :-2]  # (B, C, H, W)
    gy = x[..., 2:, 1:-1] - x[..., :-2, 1:-1]  # (B, C, H, W)
    hist = orientation_histogram(gx, gy, bins).flatten(1, 2)  # (B, C*bins, H, W)
    hist = F.avg_pool2d(hist, cell) * (cell * cell)  # (B, C*bins, H/cell, W/cell): sums over each cell
    gh, gw = h // patch_size, w // patch_size
    v = hist.view(b, c, bins, gh, cells, gw, cells).permute(0, 3, 5, 4, 6, 1, 2)  # (B, gh, gw, cells, cells, C, bins)
    v = v.reshape(b, gh * gw, cells * cells * c * bins)  # (B, L, D)
    return v / (v.pow(2).sum(dim=-1, keepdim=True) + eps**2).sqrt()


def check_hog_params(patch_size: int, cells: int, bins: int) -> None:
    if cells < 1 or patch_size % cells:
        raise KmimError(f"tokenizer.hog.cells={cells} does not divide the patch size {patch_size}: use a divisor")
    if bins < 2:
        raise KmimError(f"tokenizer.hog.bins={bins} is too small: use at least 2 orientation bins (MaskFeat uses 9)")
