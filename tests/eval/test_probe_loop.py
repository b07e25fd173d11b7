"""The probes that train through the encoder share their data split and epoch loop (kmim.eval.probe_loop)."""

import pytest
import torch
from torch import nn

from kmim.config import load_config
from kmim.data import build_dataset
from kmim.errors import KmimError
from kmim.eval.probe_loop import probe_data, train_epochs
from kmim.eval.resume import Position, ProbeCheckpoint
from tests.conftest import TINY


def _data(extra=()):
    cfg = load_config(None, [*TINY, *extra])
    train = build_dataset(cfg.data, "train")[0]
    return cfg, train


def test_the_sections_global_batch_is_split_and_one_larger_than_the_images_refused():
    cfg, train = _data(["eval.attentive.batch_size=4", "eval.attentive.micro_batch_size=2"])
    data = probe_data(cfg, "attentive", train, device=torch.device("cpu"))
    assert (data.plan.global_batch, data.plan.micro, data.plan.accum) == (4, 2, 2) and data.steps == len(train) // 4
    cfg, train = _data(["eval.lars.batch_size=1000"])
    with pytest.raises(
        KmimError,
        match=f"eval.lars.batch_size=1000 exceeds the {len(train)} images here: .*; lower eval.lars.batch_size",
    ):
        probe_data(cfg, "eval", train, device=torch.device("cpu"), what="images here")


def test_the_loop_continues_from_the_checkpoints_position_with_its_history(tmp_path):
    cfg, train = _data(["eval.lars.batch_size=8"])
    data = probe_data(cfg, "eval", train, device=torch.device("cpu"))
    head = nn.Linear(2, 2)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    ck = ProbeCheckpoint(tmp_path / "p.pt", "enc", cfg)
    ck.save(head, opt, Position(1, 1, [5.0]))  # epoch 1 done, one step of epoch 2
    steps, history = [], []

    def step(batches, at):
        next(batches)
        steps.append(at)
        return 0.0

    train_epochs(
        data,
        ck,
        head,
        opt=opt,
        epochs=2,
        name="p",
        announce="p",
        step=step,
        end_epoch=lambda e: history.append(e) or "",
        history=history,
        progress=False,
    )
    assert steps == list(range(data.steps + 1, 2 * data.steps)) and history == [5.0, 1]
    assert torch.load(tmp_path / "p.pt", weights_only=False)["epoch"] == 2
