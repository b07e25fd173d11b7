"""The training-loop core: lr set per step, gradient accumulation = mean over micro-batches, NaN stops a step."""

import pytest
import torch
from torch import nn

from kmim.engine.loop import NonFiniteLoss, run_epoch
from kmim.engine.optim import Schedule, build_optimizer


def _regression(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(3, 1), torch.randn(8, 3), torch.randn(8, 1)


def _loss(model, x, y):
    return lambda idx: (((model(x[idx]) - y[idx]) ** 2).mean(), {})


def test_accumulated_step_equals_one_big_batch():
    """2 micro-batches of 4 with accum=2 give the same update as one batch of 8 (equal-size micro-batches)."""
    m1, x, y = _regression()
    m2 = nn.Linear(3, 1)
    m2.load_state_dict(m1.state_dict())
    sched = Schedule(lr=0.1, total_steps=1, warmup_steps=0)
    o1, o2 = build_optimizer(m1, 0.1), build_optimizer(m2, 0.1)
    r1 = run_epoch([torch.arange(8)], _loss(m1, x, y), o1, sched, 0, 1)
    r2 = run_epoch([torch.arange(4), torch.arange(4, 8)], _loss(m2, x, y), o2, sched, 0, 2, accum=2)
    assert r1.step == r2.step == 1 and len(r2.losses) == 2
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-7)


def test_lr_follows_the_schedule_per_step_and_on_step_sees_the_loss():
    m, x, y = _regression()
    opt = build_optimizer(m, 1.0)
    seen = []

    def on_step(step, extras):
        seen.append((step, round(opt.param_groups[0]["lr"], 6), extras["loss"] > 0))

    run_epoch([torch.arange(8)] * 4, _loss(m, x, y), opt, Schedule(1.0, 4, 2), 0, 4, on_step=on_step)
    assert seen == [(1, 0.0, True), (2, 0.5, True), (3, 1.0, True), (4, 0.5, True)]


def test_non_finite_loss_stops_before_the_weights_change():
    m, x, y = _regression()
    before = [p.clone() for p in m.parameters()]
    opt = build_optimizer(m, 0.1)

    def loss_fn(idx):
        out = ((m(x[idx]) - y[idx]) ** 2).mean()
        return (out * float("nan") if idx[0] == 4 else out), {}

    with pytest.raises(NonFiniteLoss, match="loss became nan at optimizer step 1"):
        run_epoch([torch.arange(4), torch.arange(4, 8)], loss_fn, opt, Schedule(0.1, 2, 0), 0, 2)
    assert not all(torch.equal(a, b) for a, b in zip(before, m.parameters(), strict=True))  # step 0 was applied
    assert all(p.grad is None for p in m.parameters())  # the bad micro-batch never reached backward
