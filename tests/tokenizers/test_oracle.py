"""The reference tokenizers class-wise, cross-class and random: hand cases, round trips, and use as MIM targets."""

import math

import numpy as np
import pytest
import torch

from kmim.config import TokenizerConfig, load_config
from kmim.data import build_dataset, stack_dataset
from kmim.errors import KmimError
from kmim.fit import FitData, fit_tokenizer, load_tokenizer
from kmim.fit.oracle import fit_random, size_ranks
from kmim.metrics import cooccurrence, tcas
from kmim.tokenizers.oracle import ClassWiseTokenizer, CrossClassTokenizer, RandomTokenizer
from tests.helpers import pretrain_run

ORACLES = ("class-wise", "cross-class", "random")


def _meta(num_classes=2, per_class=2, k=4):
    return {
        "k": k,
        "patch_size": 2,
        "in_chans": 1,
        "num_classes": num_classes,
        "clusters_per_class": per_class,
        "normalization": {"mean": [0.0], "std": [1.0]},
    }


def _two_patch_image():
    """One 2x4 image: left patch all 0, right patch all 1."""
    img = torch.zeros(1, 1, 2, 4)
    img[..., 2:] = 1.0
    return img


def test_class_wise_hand_case():
    cents = torch.stack([torch.stack([torch.zeros(4), torch.ones(4)])] * 2)  # (L=2, M=2, D=4), same for both
    tok = ClassWiseTokenizer(_meta(), cents)
    img = _two_patch_image()
    assert tok.encode(img, torch.tensor([0])).tolist() == [[0, 1]]
    assert tok.encode(img, torch.tensor([1])).tolist() == [[2, 3]]  # token = label * M + cluster


def test_cross_class_hand_case():
    cents = torch.stack([torch.stack([torch.zeros(4), torch.ones(4)])] * 2)  # (2, 2, 4)
    ranks = torch.tensor([[1, 0], [0, 1]])  # class 0: cluster 1 is its largest; class 1: cluster 0
    tok = CrossClassTokenizer(_meta(per_class=2, k=2), cents, ranks)
    img = _two_patch_image().repeat(2, 1, 1, 1)
    assert tok.encode(img, torch.tensor([0, 1])).tolist() == [[1, 0], [0, 1]]


def test_size_ranks():
    counts = np.array([[5, 9, 1, 9], [0, 3, 2, 1]])
    # class 0 sorted by size: cluster 1 (9), 3 (9, tie by index), 0 (5), 2 (1)
    assert size_ranks(counts).tolist() == [[2, 0, 3, 1], [3, 0, 1, 2]]


def test_label_oracles_refuse_missing_or_bad_labels():
    cents = torch.zeros(2, 2, 4)
    tok = ClassWiseTokenizer(_meta(), cents)
    with pytest.raises(KmimError, match="reads image labels"):
        tok.encode(_two_patch_image())
    with pytest.raises(KmimError, match="outside the 2 fitted classes"):
        tok.encode(_two_patch_image(), torch.tensor([2]))
    with pytest.raises(KmimError, match="one per image"):
        tok.encode(_two_patch_image(), torch.tensor([0, 1]))
    assert ClassWiseTokenizer.needs_labels and CrossClassTokenizer.needs_labels and not RandomTokenizer.needs_labels


@pytest.fixture
def tiny_data(tiny_cfg):
    ds, info = build_dataset(tiny_cfg.data, "train")
    imgs, labels = stack_dataset(ds)
    return tiny_cfg, ds, info, imgs, labels


@pytest.mark.parametrize("name", ORACLES)
def test_fit_encode_save_load_roundtrip(name, tiny_data, tmp_path):
    _, ds, info, imgs, labels = tiny_data
    tok = fit_tokenizer(TokenizerConfig(name=name, k=8, niter=5), FitData(ds, info, 4, "synthetic"), progress=False)
    assert tok.kind == name
    ids = tok.encode(imgs, labels)
    assert ids.shape == (len(imgs), 16) and ids.dtype == torch.int64
    assert int(ids.min()) >= 0 and int(ids.max()) < tok.k
    tok.save(tmp_path / "tok.pt")
    back = load_tokenizer(tmp_path / "tok.pt")
    assert type(back) is type(tok) and back.k == tok.k and back.describe()["kind"] == name
    assert torch.equal(back.encode(imgs, labels), ids)
    back.check_compatible(4, 1, info.mean, std=info.std)


def test_class_wise_never_shares_tokens(tiny_data):
    _, ds, info, imgs, labels = tiny_data
    tok = fit_tokenizer(
        TokenizerConfig(name="class-wise", k=8, niter=5), FitData(ds, info, 4, "synthetic"), progress=False
    )
    assert tok.k == 6  # 3 classes x (8 // 3 = 2) clusters
    ids = tok.encode(imgs, labels)
    assert torch.equal(ids // 2, labels[:, None].expand_as(ids))  # class c owns tokens 2c, 2c + 1
    assert tcas(ids, labels) == 0.0
    with pytest.raises(KmimError, match="class-wise needs K >= L"):
        fit_tokenizer(TokenizerConfig(name="class-wise", k=2), FitData(ds, info, 4, "synthetic"), progress=False)


def test_cross_class_mixes_classes_more_than_pixel_kmeans(tiny_data):
    _, ds, info, imgs, labels = tiny_data
    scores = {}
    for name in ("cross-class", "kmeans-pixels"):
        tok = fit_tokenizer(TokenizerConfig(name=name, k=8, niter=5), FitData(ds, info, 4, "synthetic"), progress=False)
        scores[name] = tcas(tok.encode(imgs, labels), labels)
    assert scores["cross-class"] > 0.98 > scores["kmeans-pixels"]
    tok = fit_tokenizer(
        TokenizerConfig(name="cross-class", k=8, niter=5), FitData(ds, info, 4, "synthetic"), progress=False
    )
    n = cooccurrence(tok.encode(imgs, labels), labels, k=8)  # (K, L); the fit saw every patch of this split
    assert (np.diff(n, axis=0) <= 0).all()  # token r = the r-th largest cluster of each class


def test_random_is_deterministic_and_uniform_over_distinct_patches(tiny_data):
    _, ds, info, imgs, _ = tiny_data
    tok = fit_random(TokenizerConfig(name="random", k=8), FitData(ds, info, 4, "synthetic"))
    same = tok.encode(imgs)
    assert torch.equal(tok.encode(imgs.flip(0)).flip(0), same)  # independent of batch order and labels
    # identical patches share an id: a constant image has one token everywhere
    assert tok.encode(torch.full((1, 1, 16, 16), 0.3)).unique().numel() == 1
    # 4,000 distinct random patches fill the 8 ids evenly (expected 500 each, sd ~21)
    g = torch.Generator().manual_seed(0)
    ids = tok.encode(torch.randn(250, 1, 16, 16, generator=g)).reshape(-1)
    counts = torch.bincount(ids, minlength=8)
    assert counts.min() > 400 and counts.max() < 600
    other = fit_random(TokenizerConfig(name="random", k=8, seed=1), FitData(ds, info, 4, "synthetic"))
    assert not torch.equal(other.encode(imgs), same)
    assert tok.meta.fit["seed"] == 0 and math.isclose(tok.meta.extra["quant_step"], 1e-3)


@pytest.mark.parametrize("name", ORACLES)
def test_oracle_as_pretraining_target(name, tiny_overrides):
    cfg = load_config(
        None, [*tiny_overrides, f"name={name}", f"tokenizer.name={name}", "train.epochs=1", "train.warmup_epochs=0"]
    )
    run_dir, res = pretrain_run(cfg, progress=False)
    assert math.isfinite(res["final_epoch_loss"]) and res["steps"] > 0
    assert load_tokenizer(run_dir / "tokenizer.pt").kind == name
