"""The attentive probe (CAPI's): it learns on tiny data, reports its grid and choice, runs as `kmim probe`."""

import json
import re

import pytest
import torch

from kmim.commands.evaluate import evaluate
from kmim.config import load_config
from kmim.errors import KmimError
from kmim.eval import random_encoder
from kmim.eval.attentive import AttentiveHead, attentive_probe
from tests.conftest import TINY

ATT = [
    *TINY,
    "data.synthetic_per_class=16",
    "eval.probe=attentive",
    "eval.attentive.epochs=8",
    "eval.attentive.warmup_epochs=1",
    "eval.attentive.batch_size=8",
    "eval.attentive.lrs=[3e-2,3e-1]",
    "eval.attentive.weight_decays=[0.0]",
]


def test_the_head_pools_with_one_query_over_the_patch_tokens():
    head = AttentiveHead(128, 10)
    assert head.pool.num_heads == 2 and head.pool.latent.shape == (1, 1, 128)
    out = head(torch.randn(3, 7, 128))  # any number of tokens
    assert out.shape == (3, 10)


def _brightness_classes(monkeypatch):
    """Tiny data whose class survives RandomResizedCrop (the synthetic set's classes are square positions, which
    crops of 8-100 % of the image scramble): class c is a noisy image of brightness 50 + 70 c."""
    import kmim.eval.attentive as A

    real = A.build_dataset

    def build(cfg, split, **kw):
        ds, info = real(cfg, split, **kw)
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        noise = torch.randint(0, 40, ds.images.shape, generator=g)
        ds.images = (50 + 70 * ds.labels.view(-1, 1, 1, 1) + noise).clamp(0, 255).to(torch.uint8)
        return ds, info

    monkeypatch.setattr(A, "build_dataset", build)


def test_attentive_probe_beats_chance_on_tiny_data(monkeypatch):
    _brightness_classes(monkeypatch)
    cfg = load_config(None, ATT)
    res = attentive_probe(random_encoder(cfg, 0), cfg, "cpu", progress=False)
    assert res["top1"] > 100 / 3 + 15, res  # 3 classes: chance is 33 %
    assert [g[:2] for g in res["grid"]] == [[3e-2, 0.0], [3e-1, 0.0]]
    assert res["held_out_top1"] == max(g[2] for g in res["grid"]) and res["lr"] in (3e-2, 3e-1)


def test_a_batch_larger_than_the_fitting_part_is_refused():
    cfg = load_config(None, [*ATT, "eval.attentive.batch_size=64"])
    with pytest.raises(KmimError, match="eval.attentive.batch_size=64 exceeds"):
        attentive_probe(random_encoder(cfg, 0), cfg, "cpu", progress=False)


def test_kmim_probe_with_the_attentive_head_records_its_result(tmp_path):
    from tests.helpers import pretrain_run

    run_dir, _ = pretrain_run(load_config(None, [*TINY, f"out_dir={tmp_path}", "name=r", "train.epochs=1"]))
    res = evaluate(str(run_dir), False, None, overrides=ATT[len(TINY) :], methods=("probe",), progress=False)
    assert 0 <= res["attentive_top1"] <= 100 and res["attentive_probe"].startswith("attentive")
    assert json.loads((run_dir / "evaluations.json").read_text())["probe"]["attentive_top1"] == res["attentive_top1"]


@pytest.mark.parametrize(
    "extra, want",
    [
        (
            ["data.synthetic_per_class=1"],
            "a class has 1 training image(s), and a stratified held-out part needs at least 2 per class (one to fit, "
            "one to hold out): add images (the probe chooses its head on held-out train)",
        ),
        (
            ["data.synthetic_per_class=3", "data.synthetic_classes=8", "eval.attentive.holdout=0.05"],
            "should be greater or equal to the number of classes = 8): use a larger fraction",
        ),
    ],
)
def test_a_split_too_small_to_hold_out_suggests_a_fix_the_probe_accepts(extra, want):
    """The hint was 'or eval.attentive.holdout=0', which the config refuses; one image per class needs images."""
    cfg = load_config(None, [*TINY, *extra, "eval.probe=attentive", "eval.attentive.batch_size=2"])
    with pytest.raises(KmimError) as err:
        attentive_probe(random_encoder(cfg, 0), cfg, "cpu", progress=False)
    assert str(err.value).endswith(want) and not re.search(r"holdout=0(?![.\d])", str(err.value))
