"""The training-loop core: lr set per step, gradient accumulation = mean over micro-batches, NaN stops a step."""

import pytest
import torch
from torch import nn

from kmim.engine.loop import LossCheck, NonFiniteLoss, StepHooks, Stepper, run_epoch
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
    r1 = run_epoch([torch.arange(8)], _loss(m1, x, y), Stepper(o1, sched), step=0, n_batches=1)
    r2 = run_epoch(
        [torch.arange(4), torch.arange(4, 8)], _loss(m2, x, y), Stepper(o2, sched), step=0, n_batches=2, accum=2
    )
    assert r1.step == r2.step == 1 and len(r2.losses) == 2
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-7)


def test_no_sync_wraps_every_micro_batch_but_the_last_of_each_step():
    """DDP's no_sync around micro-batches 1..accum-1 of a step: its gradients are all-reduced once per step."""
    import contextlib

    m, x, y = _regression()
    opt = build_optimizer(m, 0.1)
    calls, inside = [], []

    @contextlib.contextmanager
    def no_sync():
        inside.append(True)
        yield
        inside.pop()

    def loss_fn(idx):
        calls.append((int(idx[0]), bool(inside)))
        return ((m(x[idx]) - y[idx]) ** 2).mean(), {}

    batches = [torch.arange(i, i + 2) for i in range(0, 8, 2)] * 2  # 8 micro-batches of 2
    sched = Schedule(lr=0.1, total_steps=3, warmup_steps=0)
    res = run_epoch(
        batches, loss_fn, Stepper(opt, sched), step=0, n_batches=6, accum=3, hooks=StepHooks(no_sync=no_sync)
    )
    assert res.step == 2
    assert [local for _, local in calls] == [True, True, False, True, True, False]


def test_lr_follows_the_schedule_per_step_and_on_step_sees_the_loss():
    m, x, y = _regression()
    opt = build_optimizer(m, 1.0)
    seen = []

    def on_step(step, extras):
        seen.append((step, round(opt.param_groups[0]["lr"], 6), extras["loss"] > 0))

    run_epoch(
        [torch.arange(8)] * 4,
        _loss(m, x, y),
        Stepper(opt, Schedule(1.0, 4, 2)),
        step=0,
        n_batches=4,
        hooks=StepHooks(on_step=on_step),
    )
    assert seen == [(1, 0.0, True), (2, 0.5, True), (3, 1.0, True), (4, 0.5, True)]


def test_non_finite_loss_stops_before_the_weights_change():
    m, x, y = _regression()
    before = [p.clone() for p in m.parameters()]
    opt = build_optimizer(m, 0.1)

    def loss_fn(idx):
        out = ((m(x[idx]) - y[idx]) ** 2).mean()
        return (out * float("nan") if idx[0] == 4 else out), {}

    with pytest.raises(NonFiniteLoss, match="loss became nan at optimizer step 1"):
        run_epoch(
            [torch.arange(4), torch.arange(4, 8)], loss_fn, Stepper(opt, Schedule(0.1, 2, 0)), step=0, n_batches=2
        )
    assert not all(torch.equal(a, b) for a, b in zip(before, m.parameters(), strict=True))  # step 0 was applied
    assert all(p.grad is None for p in m.parameters())  # the bad micro-batch never reached backward


def test_reading_the_loss_every_n_steps_trains_the_same_and_names_the_bad_step():
    """sync_every = 3: the same weights and losses as reading every micro-batch; "loss" only at steps 3, 6; a NaN
    at step 4 (0-based) is raised at the next read, naming step 4."""
    ma, x, y = _regression()
    mb = nn.Linear(3, 1)
    mb.load_state_dict(ma.state_dict())
    oa, ob = build_optimizer(ma, 0.1), build_optimizer(mb, 0.1)
    batches = [torch.arange(i % 2 * 4, i % 2 * 4 + 4) for i in range(7)]
    seen = []
    ra = run_epoch(batches, _loss(ma, x, y), Stepper(oa, Schedule(0.1, 7, 1)), step=0, n_batches=7)
    rb = run_epoch(
        batches,
        _loss(mb, x, y),
        Stepper(ob, Schedule(0.1, 7, 1)),
        step=0,
        n_batches=7,
        check=LossCheck(sync_every=3),
        hooks=StepHooks(on_step=lambda s, e: seen.append((s, "loss" in e))),
    )
    assert ra.losses == pytest.approx(rb.losses, rel=0, abs=0) and len(rb.losses) == 7  # the tail read at the end
    assert all(torch.equal(a, b) for a, b in zip(ma.parameters(), mb.parameters(), strict=True))
    assert [s for s, has in seen if has] == [3, 6]
    m, _, _ = _regression()
    opt = build_optimizer(m, 0.1)

    def loss_fn(idx, calls=[0]):  # noqa: B006 (a counter across calls)
        calls[0] += 1
        out = ((m(x[idx]) - y[idx]) ** 2).mean()
        return (out * float("nan") if calls[0] == 5 else out), {}

    with pytest.raises(NonFiniteLoss, match="loss became nan at optimizer step 4"):
        run_epoch(
            batches, loss_fn, Stepper(opt, Schedule(0.1, 7, 0)), step=0, n_batches=7, check=LossCheck(sync_every=3)
        )


def test_a_deferred_nan_never_reaches_a_checkpoint(tiny_overrides, monkeypatch):
    """Reading the loss every 2 steps, a loss that turns NaN at step 4 (epoch 2 of 3 steps each) stops the run naming
    step 4; last.pt stays the finite state after epoch 1."""
    from kmim.config import load_config
    from kmim.engine.checkpoint import load_checkpoint
    from kmim.engine.pretrain import Pretrainer
    from kmim.errors import KmimError
    from tests.helpers import pretrain_run

    real = Pretrainer._micro_step

    def nan_from_step_4(self, batch):
        loss, extras = real(self, batch)
        return (loss * float("nan") if self.state.images > 4 * 8 else loss), extras  # 8 per step, counted

    monkeypatch.setattr(Pretrainer, "_micro_step", nan_from_step_4)
    cfg = load_config(None, [*tiny_overrides, "name=nan", "train.epochs=3", "train.sync_every=2", "train.log_every=2"])
    with pytest.raises(KmimError, match=r"loss became nan at optimizer step 4 \(epoch 1\)"):
        pretrain_run(cfg)
    last = load_checkpoint(f"{cfg.out_dir}/nan/checkpoints/last.pt")
    assert last["train_state"]["epoch"] == 1 and last["train_state"]["step"] == 3
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
