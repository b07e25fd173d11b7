"""kmim.engine.targets: one class per target kind in one registry; the health counters by hand."""

import math

import pytest
import torch

from kmim.config import TARGETS as TARGET_NAMES
from kmim.config import load_config
from kmim.engine.targets import TARGETS, Health, out_dim


def test_every_configurable_target_has_its_class():
    assert set(TARGETS) == set(TARGET_NAMES)


def test_output_size_per_target():
    cfg = load_config(None, ["tokenizer.k=7"])
    for target, want in (("pixels", 4 * 4 * 3), ("tokens", 7), ("online-clusters", 7)):
        cfg.train.target = target
        assert out_dim(cfg, None, patch_size=4, channels=3) == want


def test_health_counts_by_hand():
    h = Health(4, torch.device("cpu"))
    ids = torch.tensor([[0, 0, 1, 1]])  # ids 0 and 1 used twice each: 2 of 4 ids, perplexity 2
    pred = torch.zeros(1, 4, 4)
    pred[0, :, 0] = 1.0  # argmax 0 everywhere: hits on the two id-0 patches
    h.count(ids, pred)
    m = h.metrics(online=False)
    assert m["targets_used"] == 0.5 and m["targets_perplexity"] == pytest.approx(2.0) and m["masked_top1"] == 50.0
    assert h.counts.sum() == 0  # reset for the next epoch
    h.sums += torch.tensor([math.log(2), 0.5, 1.0], dtype=torch.float64)
    assert h.metrics(online=True)["assignment_entropy"] == pytest.approx(math.log(2))


@pytest.mark.parametrize("target", ["tokens", "pixels", "online-clusters"])
def test_every_target_trains_with_the_cross_predictor(target, tiny_overrides):
    from tests.helpers import pretrain_run

    ov = [*tiny_overrides, f"name={target}", f"train.target={target}", "model.decoder=cross", "train.epochs=1"]
    run, res = pretrain_run(load_config(None, [*ov, "model.predict_fraction=0.25"]))
    assert res["epochs"] == 1 and (run / "encoder.pt").is_file()
