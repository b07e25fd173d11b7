"""Pretraining objectives and targets. Losses are pure functions over masked patches only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kmim.config import TARGETS
from kmim.tokenizers import Tokenizer
from kmim.tokenizers.patches import normalize_patches, patchify

__all__ = ["TARGETS", "compute_targets", "masked_cross_entropy", "masked_mse", "mim_loss", "select_patches"]


def masked_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, *, label_smoothing: float = 0.0
) -> torch.Tensor:
    """loss = sum_{b,i} m_bi * CE(logits_bi, t_bi) / sum_{b,i} m_bi, with m = 1 on masked patches.

    logits (B, L, K), targets (B, L) int64, mask (B, L) in {0, 1}.
    """
    ce = F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), reduction="none", label_smoothing=label_smoothing
    )
    m = mask.flatten().float()
    return (ce * m).sum() / m.sum()


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """loss = sum_{b,i} m_bi * mean_d (pred_bid - target_bid)^2 / sum_{b,i} m_bi (MAE's loss).

    pred, target (B, L, D), mask (B, L) in {0, 1}.
    """
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)  # (B, L)
    m = mask.float()
    return (per_patch * m).sum() / m.sum()


@torch.no_grad()
def compute_targets(
    imgs: torch.Tensor,
    target: str,
    patch_size: int,
    *,
    tokenizer: Tokenizer | None = None,
    norm_pix: bool = True,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Targets on the augmented view the encoder sees: token ids (B, L) or pixels (B, L, p*p*C).

    `labels` (B,) reach only tokenizers with `needs_labels` (the class-wise / cross-class oracles).
    """
    if target == "tokens":
        assert tokenizer is not None, "target=tokens needs a tokenizer"
        return tokenizer.encode(imgs, labels if tokenizer.needs_labels else None)
    x = patchify(imgs, patch_size)
    return normalize_patches(x) if norm_pix else x


def select_patches(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Rows of x (B, L) or (B, L, D) at the patch indices ids (B, M): out[b, j] = x[b, ids[b, j]], (B, M[, D])."""
    if x.dim() == 2:
        return torch.gather(x, 1, ids)
    return torch.gather(x, 1, ids[..., None].expand(-1, -1, x.shape[-1]))


def mim_loss(
    pred: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, *, target: str, label_smoothing: float = 0.0
) -> torch.Tensor:
    if target == "tokens":
        return masked_cross_entropy(pred, targets, mask, label_smoothing=label_smoothing)
    return masked_mse(pred, targets, mask)
