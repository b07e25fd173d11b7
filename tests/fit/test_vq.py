import numpy as np
import pytest
import torch

from kmim.config import load_config
from kmim.data import build_dataset
from kmim.errors import KmimError
from kmim.fit.vq import codebook_stats, ema_update, init_codebook, train_vqvae, usage_stats
from kmim.tokenizers.vq import VQVAE


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
    assert ema_update(vae, z, codes, decay=0.5) == 0
    # n = (0.5*4 + 0.5*2, 0.5*2 + 0.5*1) = (3, 1.5); s = (0.5*0 + 0.5*4, 0.5*20 + 0.5*9) = (2, 14.5)
    assert vae.ema_count.tolist() == pytest.approx([3.0, 1.5])
    assert vae.codebook[:, 0].tolist() == pytest.approx([2 / 3, 14.5 / 1.5])


def test_dead_codes_restart_at_batch_vectors():
    vae = _vae(k=3)
    vae.ema_count.copy_(torch.tensor([5.0, 5.0, 1.0]))
    vae.ema_sum.copy_(torch.tensor([[0.0], [50.0], [7.0]]))
    z = torch.tensor([[1.0], [2.0], [11.0]])
    assert ema_update(vae, z, torch.tensor([0, 0, 1]), decay=0.5) == 1  # code 2 got nothing: count 0.5 < 1
    assert vae.ema_count[2] == 1.0 and vae.codebook[2, 0].item() in (1.0, 2.0, 11.0)


def test_init_needs_k_vectors():
    with pytest.raises(KmimError, match="fewer than K=8"):
        init_codebook(VQVAE(1, 2, 8, dim=4, hidden=4), torch.zeros(5, 4))


def test_training_lowers_reconstruction_error(tiny_cfg):
    ds, _ = build_dataset(tiny_cfg.data, "train")
    torch.manual_seed(0)
    vae = VQVAE(1, 4, 8, dim=8, hidden=16)
    init_codebook(vae, torch.cat([vae.latents(ds[i][0][None]).flatten(0, 1).detach() for i in range(2)]))
    before = codebook_stats(vae, ds, 8, device=torch.device("cpu"), progress=False)["recon_mse"]
    fit = train_vqvae(
        vae, ds, 30, lr=3e-3, batch_size=8, beta=0.25, decay=0.9, device=torch.device("cpu"), progress=False
    )
    assert fit["recon_mse"] < 0.3 * before  # 2.83 -> 0.50 when written
    assert fit["steps"] == 30 * 3 and 1 <= fit["used_codes"] <= 8 and 1.0 <= fit["perplexity"] <= 8.0


def test_vq_train_checks_its_settings(tiny_cfg):
    ds, _ = build_dataset(tiny_cfg.data, "train")
    cpu = torch.device("cpu")
    with pytest.raises(KmimError, match=r"tokenizer.vq.decay=1.0 is not valid: must be in \(0, 1\)"):
        load_config(None, ["tokenizer.vq.decay=1.0"])
    with pytest.raises(KmimError, match="batch_size=100 exceeds the 24 training images"):
        train_vqvae(_vae(), ds, 1, lr=1e-3, batch_size=100, beta=0.25, decay=0.9, device=cpu, progress=False)
    assert load_config(None, ["tokenizer.vq.dim=4"]).tokenizer.vq.dim == 4
