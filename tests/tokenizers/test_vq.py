import pytest
import torch

from kmim.errors import KmimError
from kmim.fit.vq import init_codebook
from kmim.tokenizers.vq import VQVAE, VQTokenizer


def test_vq_forward_shapes_and_straight_through():
    torch.manual_seed(0)
    vae = VQVAE(in_chans=1, patch_size=4, k=8, dim=6, hidden=16)
    imgs = torch.randn(3, 1, 8, 12)
    init_codebook(vae, vae.latents(imgs).flatten(0, 1).detach())
    out = vae(imgs)
    assert out["z"].shape == (3, 6, 6) and out["codes"].shape == (3, 6) and out["recon"].shape == (3, 6, 16)
    assert torch.equal(out["zq"], vae.codebook[out["codes"]])
    out["recon"].sum().backward()
    assert vae.encoder[0].weight.grad is not None and vae.encoder[0].weight.grad.abs().sum() > 0


def test_vq_tokenizer_refuses_a_mismatched_codebook():
    meta = {"k": 8, "patch_size": 4, "in_chans": 1, "feature_dim": 16, "vq_hidden": 4}
    with pytest.raises(KmimError, match=r"codebook of shape \(8, 6\) does not match K=8, D=16"):
        VQTokenizer(meta, VQVAE(1, 4, 8, dim=6, hidden=4))
    with pytest.raises(KmimError, match="patch size 2 does not match the tokenizer's 4"):
        VQTokenizer(meta, VQVAE(1, 2, 8, dim=16, hidden=4))
