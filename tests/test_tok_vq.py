import numpy as np
import pytest
import torch

from kmim.config import load_config
from kmim.data import build_dataset
from kmim.engine.vq_train import codebook_stats, train_vqvae, usage_stats
from kmim.errors import KmimError
from kmim.tokenizers.vq import VQVAE, VQTokenizer


def test_usage_stats_by_hand():
    assert usage_stats(np.array([2, 2, 0, 0])) == {"used_codes": 2, "usage": 0.5, "perplexity": pytest.approx(2.0)}
    assert usage_stats(np.array([5, 0, 0]))["perplexity"] == pytest.approx(1.0)
    assert usage_stats(np.array([3, 3, 3, 3]))["perplexity"] == pytest.approx(4.0)


def _vae(k=2, dim=1):
    return VQVAE(in_chans=1, patch_size=2, k=k, dim=dim, hidden=4)


def test_ema_update_by_hand():
    vae = _vae()
    vae.codebook.copy_(torch.tensor([[0.0], [10.0]]))
    vae.ema_sum.copy_(torch.tensor([[0.0], [20.0]]))
    vae.ema_count.copy_(torch.tensor([4.0, 2.0]))
    z = torch.tensor([[1.0], [3.0], [9.0]])
    codes = torch.tensor([0, 0, 1])
    assert vae.ema_update(z, codes, decay=0.5) == 0
    # n = (0.5*4 + 0.5*2, 0.5*2 + 0.5*1) = (3, 1.5); s = (0.5*0 + 0.5*4, 0.5*20 + 0.5*9) = (2, 14.5)
    assert vae.ema_count.tolist() == pytest.approx([3.0, 1.5])
    assert vae.codebook[:, 0].tolist() == pytest.approx([2 / 3, 14.5 / 1.5])


def test_dead_codes_restart_at_batch_vectors():
    vae = _vae(k=3)
    vae.ema_count.copy_(torch.tensor([5.0, 5.0, 1.0]))
    vae.ema_sum.copy_(torch.tensor([[0.0], [50.0], [7.0]]))
    z = torch.tensor([[1.0], [2.0], [11.0]])
    assert vae.ema_update(z, torch.tensor([0, 0, 1]), decay=0.5) == 1  # code 2 got nothing: count 0.5 < 1
    assert vae.ema_count[2] == 1.0 and vae.codebook[2, 0].item() in (1.0, 2.0, 11.0)


def test_vq_forward_shapes_and_straight_through():
    torch.manual_seed(0)
    vae = VQVAE(in_chans=1, patch_size=4, k=8, dim=6, hidden=16)
    imgs = torch.randn(3, 1, 8, 12)
    vae.init_codebook(vae.latents(imgs).flatten(0, 1).detach())
    out = vae(imgs)
    assert out["z"].shape == (3, 6, 6) and out["codes"].shape == (3, 6) and out["recon"].shape == (3, 6, 16)
    assert torch.equal(out["zq"], vae.codebook[out["codes"]])
    out["recon"].sum().backward()
    assert vae.encoder[0].weight.grad is not None and vae.encoder[0].weight.grad.abs().sum() > 0


def test_init_needs_k_vectors():
    with pytest.raises(KmimError, match="fewer than K=8"):
        VQVAE(1, 2, 8, 4, 4).init_codebook(torch.zeros(5, 4))


def test_training_lowers_reconstruction_error(tiny_cfg):
    ds, _ = build_dataset(tiny_cfg.data, "train")
    torch.manual_seed(0)
    vae = VQVAE(1, 4, 8, 8, 16)
    vae.init_codebook(torch.cat([vae.latents(ds[i][0][None]).flatten(0, 1).detach() for i in range(2)]))
    before = codebook_stats(vae, ds, 8, torch.device("cpu"), progress=False)["recon_mse"]
    fit = train_vqvae(vae, ds, 30, 3e-3, 8, 0.25, 0.9, torch.device("cpu"), progress=False)
    assert fit["recon_mse"] < 0.3 * before  # 2.83 -> 0.50 when written
    assert fit["steps"] == 30 * 3 and 1 <= fit["used_codes"] <= 8 and 1.0 <= fit["perplexity"] <= 8.0


def test_vq_tokenizer_refuses_a_mismatched_codebook():
    meta = {"k": 8, "patch_size": 4, "in_chans": 1, "feature_dim": 16, "vq_hidden": 4}
    with pytest.raises(KmimError, match=r"codebook of shape \(8, 6\) does not match K=8, D=16"):
        VQTokenizer(meta, VQVAE(1, 4, 8, 6, 4))
    with pytest.raises(KmimError, match="patch size 2 does not match the tokenizer's 4"):
        VQTokenizer(meta, VQVAE(1, 2, 8, 16, 4))


def test_vq_train_checks_its_settings(tiny_cfg):
    ds, _ = build_dataset(tiny_cfg.data, "train")
    cpu = torch.device("cpu")
    with pytest.raises(KmimError, match="vq_decay=1.0"):
        train_vqvae(_vae(), ds, 1, 1e-3, 8, 0.25, 1.0, cpu, progress=False)
    with pytest.raises(KmimError, match="batch_size=100 exceeds the 24 training images"):
        train_vqvae(_vae(), ds, 1, 1e-3, 100, 0.25, 0.9, cpu, progress=False)
    assert load_config(None, ["tokenizer.vq_dim=4"]).tokenizer.vq_dim == 4
