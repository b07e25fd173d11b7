"""MAE-style asymmetric masked image model: a timm ViT encoder on visible patches, a light decoder, a linear head.

The head predicts `out_dim` values per patch: K logits for token targets (K-MIM) or p*p*C pixels (MAE). The model
never sees a tokenizer: targets are computed by the training step.
"""

from __future__ import annotations

from functools import partial
from typing import cast

import torch
import torch.nn.functional as F
from timm.layers import Mlp, build_sincos2d_pos_embed
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class CosineHead(nn.Module):
    """CAPI's student head (`L2NormLinear`): logits_k = g_k * <x / |x|, v_k / |v_k|>, a weight-normed linear map
    (torch's weight_norm over each output row, no bias) of the L2-normalised input, g starting at 1 (trainable) and
    v at trunc_normal(std 0.02): at g = 1 the logits are the cosines of x with the K directions, in [-1, 1]; the
    loss divides them by its temperature."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = weight_norm(nn.Linear(dim, out_dim, bias=False), dim=0)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """v ~ trunc_normal(std 0.02), g = 1 (CAPI's init; MAE's xavier init of other linears must not reach v)."""
        w = self.linear.parametrizations.weight
        with torch.no_grad():
            nn.init.trunc_normal_(w.original1, std=0.02)
            w.original0.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., out_dim)."""
        return cast(torch.Tensor, self.linear(F.normalize(x, dim=-1, eps=1e-12)))


def make_head(kind: str, dim: int, out_dim: int) -> nn.Module:
    """The predictor's last layer: `linear` (MAE's, with bias) or `cosine` (CAPI's student head, CosineHead)."""
    return CosineHead(dim, out_dim) if kind == "cosine" else nn.Linear(dim, out_dim)


def random_masking(noise: torch.Tensor) -> torch.Tensor:
    """MAE's per-sample random permutation of patch indices from uniform noise (B, L): ids_shuffle (B, L), whose
    first n_keep = int(L * (1 - mask_ratio)) entries are the visible patches (small noise is kept)."""
    return torch.argsort(noise, dim=1)


def num_visible(num_patches: int, mask_ratio: float) -> int:
    return int(num_patches * (1 - mask_ratio))


def sincos_pos_embed(grid: tuple[int, int], dim: int, cls_token: bool) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (1, [1 +] L, dim); the CLS entry is zeros, as in MAE."""
    pe = build_sincos2d_pos_embed(list(grid), dim)  # (L, dim)
    if cls_token:
        pe = torch.cat([torch.zeros(1, dim), pe])
    return pe[None]


class MIMDecoder(nn.Module):
    """Embeds encoder tokens, fills the masked positions with a mask token, runs timm blocks, predicts per patch."""

    def __init__(
        self,
        enc_dim: int,
        dim: int,
        depth: int,
        *,
        heads: int,
        grid: tuple[int, int],
        out_dim: int,
        mlp_ratio: float = 4.0,
        head: str = "linear",
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(sincos_pos_embed(grid, dim, cls_token=True), requires_grad=False)
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.Sequential(
            *[Block(dim, heads, mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(depth)]  # type: ignore[arg-type]  # timm accepts a partial
        )
        self.norm = norm(dim)
        self.head = make_head(head, dim, out_dim)

    def forward(
        self, latent: torch.Tensor, ids_shuffle: torch.Tensor, masked_only: bool = False, n_pred: int | None = None
    ) -> torch.Tensor:
        """latent (B, 1 + V, D_enc) with CLS first; ids_shuffle (B, L). Returns predictions (B, L, out_dim) in image
        order, or with `masked_only` (B, P, out_dim) for the masked patches ids_shuffle[:, V:V + P] only (P = n_pred,
        default all L - V): the final norm and head are per patch, so these rows equal the full output's rows at
        those indices."""
        x = self.embed(latent)  # (B, 1 + V, D)
        b, n_vis, d = x.shape[0], x.shape[1] - 1, x.shape[2]
        n = ids_shuffle.shape[1]
        masked = self.mask_token.expand(b, n - n_vis, d)  # (B, L - V, D)
        shuffled = torch.cat([x[:, 1:], masked], dim=1)  # (B, L, D) in shuffled order
        ids_restore = torch.argsort(ids_shuffle, dim=1)  # (B, L)
        patches = torch.gather(shuffled, 1, ids_restore[..., None].expand(-1, -1, d))  # (B, L, D) in image order
        x = torch.cat([x[:, :1], patches], dim=1) + self.pos_embed  # (B, 1 + L, D)
        x = self.blocks(x)[:, 1:]  # (B, L, D)
        if masked_only:
            end = n if n_pred is None else n_vis + n_pred
            x = torch.gather(x, 1, ids_shuffle[:, n_vis:end, None].expand(-1, -1, d))  # (B, P, D)
        return cast(torch.Tensor, self.head(self.norm(x)))  # (B, L or P, out_dim)


class CrossBlock(nn.Module):
    """Queries attend to a memory and never to each other (CrossMAE's / CAPI's predictor block): x + CrossAttn(
    LN(x), LN(memory)), then x + MLP(LN(x)). Each query's output depends on itself and the memory alone."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.heads = heads
        self.norm_q, self.norm_kv, self.norm_mlp = (nn.LayerNorm(dim, eps=1e-6) for _ in range(3))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """x (B, P, D) queries, memory (B, N, D) -> (B, P, D)."""
        b, p, d = x.shape
        h = self.heads
        q = self.q(self.norm_q(x)).reshape(b, p, h, d // h).transpose(1, 2)  # (B, h, P, d/h)
        k, v = self.kv(self.norm_kv(memory)).reshape(b, -1, 2, h, d // h).permute(2, 0, 3, 1, 4)  # (B, h, N, d/h)
        attn = F.scaled_dot_product_attention(q, k, v)  # (B, h, P, d/h)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, p, d))
        return cast(torch.Tensor, x + self.mlp(self.norm_mlp(x)))


class CrossDecoder(nn.Module):
    """The cross-attention predictor (`model.decoder=cross`; CrossMAE, CAPI): a mask token plus the position
    embedding of each predicted patch is a query; the queries attend only to the encoder's output (CLS and visible
    patches, embedded to the decoder width), through `depth` CrossBlocks, and a norm and linear head predict per
    patch. It predicts the masked patches ids_shuffle[:, V:V + P] only (P = n_pred; a random subset, the shuffle being
    random), so its cost grows with P, not with the image's patch count."""

    def __init__(
        self,
        enc_dim: int,
        dim: int,
        depth: int,
        *,
        heads: int,
        grid: tuple[int, int],
        out_dim: int,
        mlp_ratio: float = 4.0,
        head: str = "linear",
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(sincos_pos_embed(grid, dim, cls_token=False), requires_grad=False)  # (1, L, D)
        self.blocks = nn.ModuleList([CrossBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = make_head(head, dim, out_dim)

    def forward(
        self, latent: torch.Tensor, ids_shuffle: torch.Tensor, masked_only: bool = True, n_pred: int | None = None
    ) -> torch.Tensor:
        """latent (B, 1 + V, D_enc); ids_shuffle (B, L) -> predictions (B, P, out_dim) for ids_shuffle[:, V:V + P]."""
        if not masked_only:
            raise ValueError("the cross-attention predictor predicts masked patches only (masked_only=True)")
        memory = self.embed(latent)  # (B, 1 + V, D)
        n_vis, d = latent.shape[1] - 1, memory.shape[-1]
        end = ids_shuffle.shape[1] if n_pred is None else n_vis + n_pred
        ids = ids_shuffle[:, n_vis:end]  # (B, P)
        pos = torch.gather(self.pos_embed.expand(ids.shape[0], -1, -1), 1, ids[..., None].expand(-1, -1, d))
        x = self.mask_token + pos  # (B, P, D)
        for block in self.blocks:
            x = block(x, memory)
        return cast(torch.Tensor, self.head(self.norm(x)))  # (B, P, out_dim)


def num_predicted(num_masked: int, fraction: float) -> int:
    """How many of the masked patches the decoder predicts: round(fraction * masked), at least 1."""
    return max(1, round(num_masked * fraction))


class MaskedImageModel(nn.Module):
    """Encoder = timm `VisionTransformer` (checkpoints load with `timm.create_model`); sees visible patches only."""

    patch_size: int
    grid: tuple[int, ...]
    num_patches: int

    def __init__(
        self, encoder: VisionTransformer, decoder: MIMDecoder | CrossDecoder, predict_fraction: float = 1.0
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.predict_fraction = predict_fraction
        self.patch_size = encoder.patch_embed.patch_size[0]
        self.grid = tuple(encoder.patch_embed.grid_size)
        self.num_patches = self.grid[0] * self.grid[1]

    def forward_encoder(self, imgs: torch.Tensor, ids_shuffle: torch.Tensor, n_keep: int) -> torch.Tensor:
        """imgs (B, C, H, W) -> latent (B, 1 + n_keep, D) for the patches ids_shuffle[:, :n_keep]."""
        enc = self.encoder
        x = enc.patch_embed(imgs) + cast(nn.Parameter, enc.pos_embed)[:, 1:]  # (B, L, D)
        keep = ids_shuffle[:, :n_keep]  # (B, V)
        x = torch.gather(x, 1, keep[..., None].expand(-1, -1, x.shape[-1]))  # (B, V, D)
        cls = (cast(nn.Parameter, enc.cls_token) + cast(nn.Parameter, enc.pos_embed)[:, :1]).expand(
            x.shape[0], -1, -1
        )  # (B, 1, D)
        x = torch.cat([cls, x], dim=1)  # (B, 1 + V, D)
        return cast(torch.Tensor, enc.norm(enc.blocks(enc.norm_pre(x))))

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None, masked_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns predictions (B, L, out_dim) and mask (B, L) with 1 = masked (predicted), 0 = visible. `noise`
        (B, L) uniform decides the mask (kmim.data.sampling draws it per sample); drawn here when None.

        With `masked_only` the head runs on the predicted masked patches alone (the loss needs nothing else): it
        returns predictions (B, P, out_dim) and the patch indices (B, P) they belong to; P = M = L - n_keep, or with
        `predict_fraction` < 1 the first P = num_predicted(M, fraction) of the masked patches in shuffled order (a
        random subset of them)."""
        b = imgs.shape[0]
        if noise is None:
            noise = torch.rand(b, self.num_patches, device=imgs.device)  # (B, L)
        ids_shuffle = random_masking(noise)  # (B, L)
        n_keep = num_visible(self.num_patches, mask_ratio)
        latent = self.forward_encoder(imgs, ids_shuffle, n_keep)
        n_pred = num_predicted(self.num_patches - n_keep, self.predict_fraction)
        pred = self.decoder(latent, ids_shuffle, masked_only, n_pred if masked_only else None)
        if masked_only:
            return pred, ids_shuffle[:, n_keep : n_keep + n_pred]
        mask = torch.ones(b, self.num_patches, device=imgs.device)
        mask.scatter_(1, ids_shuffle[:, :n_keep], 0.0)
        return pred, mask
