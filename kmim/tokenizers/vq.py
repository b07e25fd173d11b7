"""`vq`: a small learned VQ-VAE tokenizer (the BEiT dVAE / VQ-VAE family), one code per MIM patch.

Architecture (`VQVAE`): a conv encoder (one (p+2)x(p+2) conv with stride p and padding 1, i.e. each patch plus a
one-pixel halo of context, then two 1x1 convs; no full-resolution feature maps, so the default 10-epoch fit on
mnist5k took 20 s on 2 shared CPU cores) maps each patch to a `dim`-vector z; the token is the nearest of K codes
(squared Euclidean, as the K-means tokenizers); an MLP decoder reconstructs the patch's normalized pixels from its
code alone, so a code must carry its patch's content (unlike dVAE's conv decoder, which also sees the neighbours).
Codebook learning (van den Oord et al. 2017; Razavi et al. 2019): EMA of the assigned vectors' counts and sums,
and a commitment loss beta * ||z - sg(e)||^2 on the encoder; codes whose EMA count falls below one vector per step
are restarted at random encoder outputs of the current batch (Dhariwal et al. 2020, Jukebox); the codebook starts as
K random encoder outputs of the first batch. The default EMA decay is 0.9, not the usual 0.99: a fit has only
hundreds of steps, and at 0.99 codes that fell out of use kept counts above the restart threshold for the whole run
(fewer codes used on mnist5k). Training (codebook initialisation, EMA and restarts included) is
`kmim.fit.vq.train_vqvae`; meta.fit reports codebook usage and perplexity on the training split.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from kmim.errors import KmimError
from kmim.tokenizers.base import MetaLike, Tokenizer, as_meta
from kmim.tokenizers.codebook import assign, check_finite
from kmim.tokenizers.patches import patchify


class VQVAE(nn.Module):
    """Patch VQ-VAE: images (B, C, H, W) -> latents (B, L, dim) -> codes (B, L) -> patches (B, L, p*p*C)."""

    codebook: torch.Tensor  # registered buffers
    ema_count: torch.Tensor
    ema_sum: torch.Tensor
    initialized: torch.Tensor

    def __init__(self, in_chans: int, patch_size: int, k: int, *, dim: int, hidden: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.encoder = nn.Sequential(
            nn.Conv2d(in_chans, hidden, patch_size + 2, stride=patch_size, padding=1),  # a patch and its halo
            nn.GELU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.GELU(),
            nn.Conv2d(hidden, dim, 1),
        )
        self.decoder = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, patch_size**2 * in_chans))
        self.register_buffer("codebook", torch.zeros(k, dim))  # (K, dim)
        self.register_buffer("ema_count", torch.zeros(k))  # (K,)
        self.register_buffer("ema_sum", torch.zeros(k, dim))  # (K, dim)
        self.register_buffer("initialized", torch.tensor(False))

    def latents(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> z (B, L, dim), patches row-major."""
        return cast(torch.Tensor, self.encoder(imgs.float())).flatten(2).transpose(1, 2)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, L, dim) -> nearest code ids (B, L)."""
        b, n, d = z.shape
        return assign(z.detach().reshape(b * n, d), self.codebook).view(b, n)

    def targets(self, imgs: torch.Tensor) -> torch.Tensor:
        """What the decoder reconstructs: the normalized pixel patches (B, L, p*p*C)."""
        return patchify(imgs.float(), self.patch_size)

    def forward(self, imgs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reconstruction through the straight-through estimator: gradients of the decoder input flow to z."""
        z = self.latents(imgs)  # (B, L, dim)
        codes = self.quantize(z)  # (B, L)
        zq = self.codebook[codes]  # (B, L, dim)
        recon = self.decoder(z + (zq - z).detach())  # (B, L, p*p*C)
        return {"z": z, "zq": zq, "codes": codes, "recon": recon}


class VQTokenizer(Tokenizer):
    """Token of a patch = the VQ-VAE code of its encoder output (see the module docstring)."""

    kind = "vq"

    def __init__(self, meta: MetaLike, vae: VQVAE) -> None:
        super().__init__(meta)
        if tuple(vae.codebook.shape) != (self.k, self.meta.feature_dim):
            raise KmimError(
                f"VQ codebook of shape {tuple(vae.codebook.shape)} does not match K={self.k}, D={self.meta.feature_dim}"
            )
        if vae.patch_size != self.patch_size:
            raise KmimError(f"VQ-VAE patch size {vae.patch_size} does not match the tokenizer's {self.patch_size}")
        self.vae = vae.requires_grad_(False)

    @torch.no_grad()
    def encode(self, imgs: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.vae.quantize(self.vae.latents(imgs))  # (B, L)

    @classmethod
    def from_state(cls, meta: MetaLike, state: dict[str, torch.Tensor]) -> VQTokenizer:
        """Rebuild from a file's meta (architecture) and state (weights, codebook)."""
        meta = as_meta(meta)
        vae = VQVAE(meta.in_chans, meta.patch_size, meta.k, dim=meta.feature_dim, hidden=int(meta.extra["vq_hidden"]))
        tok = cls(meta, vae)
        try:
            tok.load_state_dict(state)
        except RuntimeError as e:
            raise KmimError(f"VQ tokenizer state does not match its meta: {str(e).splitlines()[0]}") from None
        check_finite(tok.vae.codebook, "the VQ codebook")
        return tok


__all__ = ["VQVAE", "VQTokenizer"]
