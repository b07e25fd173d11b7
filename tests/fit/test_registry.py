"""Every tokenizer of the zoo through one interface: fit, encode, save, load, describe, refuse, pretrain on."""

import pytest
import torch

from kmim.config import load_config
from kmim.data import build_dataset
from kmim.engine.objectives import compute_targets
from kmim.errors import KmimError
from kmim.fit import FitData, fit_tokenizer, load_tokenizer
from tests.helpers import pretrain_run

FAST = ["tokenizer.batch_size=8", "tokenizer.supervised.epochs=1", "tokenizer.vq.epochs=2"]
ZOO = {
    "kmeans-hog": ["tokenizer.name=kmeans-hog"],
    "vq": ["tokenizer.name=vq"],
    "kmeans-features/supervised": ["tokenizer.name=kmeans-features", "tokenizer.encoder=supervised"],
}


def _fit(tiny_overrides, extra):
    cfg = load_config(None, [*tiny_overrides, *FAST, *extra])
    ds, info = build_dataset(cfg.data, "train")
    return fit_tokenizer(cfg.tokenizer, FitData(ds, info, 4, "synthetic"), progress=False), ds, info


@pytest.mark.parametrize("name", sorted(ZOO))
def test_fit_encode_save_load_roundtrip(name, tmp_path, tiny_overrides):
    tok, ds, info = _fit(tiny_overrides, ZOO[name])
    kind = name.split("/")[0]
    imgs = torch.stack([ds[i][0] for i in range(5)])
    ids = tok.encode(imgs)
    assert ids.shape == (5, 16) and ids.dtype == torch.int64 and ids.min() >= 0 and ids.max() < 8
    tok.save(tmp_path / "tok.pt")
    back = load_tokenizer(tmp_path / "tok.pt")
    assert type(back) is type(tok) and back.kind == kind and torch.equal(back.encode(imgs), ids)
    d = back.describe()
    assert d["kind"] == kind and d["k"] == 8 and d["patch_size"] == 4 and d["in_chans"] == 1
    assert d["fit"]["inertia"] >= 0 and "git_sha" in d  # `kmim tokenize` prints the inertia
    assert torch.equal(compute_targets(imgs, "tokens", 4, tokenizer=back), ids)
    back.check_compatible(4, 1, info.mean, std=info.std)
    with pytest.raises(KmimError, match="patch size 4 does not match the model's patch size 8"):
        back.check_compatible(8, 1, info.mean, std=info.std)
    with pytest.raises(KmimError, match="1-channel images, the data has 3 channels"):
        back.check_compatible(4, 3, info.mean, std=info.std)


@pytest.mark.parametrize("name", ["kmeans-hog", "vq"])
def test_pretraining_on_a_tokenizer(name, tiny_overrides):
    cfg = load_config(None, [*tiny_overrides, *FAST, *ZOO[name], "name=zoo", "train.epochs=1"])
    run_dir, res = pretrain_run(cfg, progress=False)
    assert res["steps"] == 3 and load_tokenizer(run_dir / "tokenizer.pt").kind == name


def test_self_bootstrapped_feature_tokenizer(tiny_overrides):
    """Round 0: MAE; round 1: K-MIM on K-means of the MAE encoder's features (the rebuttal's "K-MIM MAE")."""
    mae, _ = pretrain_run(
        load_config(None, [*tiny_overrides, "name=mae", "train.target=pixels", "train.epochs=1"]), False
    )
    feats = ["tokenizer.name=kmeans-features", f"tokenizer.encoder={mae}"]
    run, res = pretrain_run(load_config(None, [*tiny_overrides, *feats, "name=round1", "train.epochs=1"]), False)
    tok = load_tokenizer(run / "tokenizer.pt")
    assert res["steps"] == 3 and tok.meta.extra["source"] == "kmim"
    assert (
        tok.meta.extra["weights"] == str(mae / "checkpoints" / "last.pt")
        and tok.meta.extra["encoder_dataset"] == "synthetic"
    )


def test_unknown_name_lists_the_zoo(tiny_overrides):
    with pytest.raises(KmimError, match="must be one of kmeans-pixels, kmeans-hog, kmeans-features, vq"):
        _fit(tiny_overrides, ["tokenizer.name=bogus"])
