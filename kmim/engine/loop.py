"""The one training-loop core: micro-batches -> loss -> (accumulated) backward -> optimizer step, with the lr set
from a schedule before each step, a progress bar, and a per-step check that the loss is finite.

Used by pretraining, the supervised encoder, the VQ-VAE and the linear probe; each supplies `loss_fn` (a
micro-batch -> (loss, extras)) and, where it needs one, `on_step` (called after each optimizer step).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from kmim.engine.optim import Schedule, set_lr
from kmim.errors import KmimError
from kmim.progress import progress_bar

LossFn = Callable[[Any], tuple[torch.Tensor, dict[str, Any]]]


class NonFiniteLoss(KmimError):
    """The loss became NaN or Inf; `step` is the optimizer step (0-based) whose micro-batch produced it."""

    def __init__(self, step: int, value: float) -> None:
        super().__init__(f"loss became {value} at optimizer step {step}")
        self.step, self.value = step, value


@dataclass(frozen=True)
class Stepper:
    """What takes an optimizer step: the optimizer, the lr schedule it follows (set before each step) and, for fp16,
    the GradScaler."""

    opt: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler | None = None


@dataclass(frozen=True)
class StepHooks:
    """What runs around each optimizer step (each optional): `on_step(step, extras)` after it, with the extras of the
    step's last micro-batch and its loss under "loss"; `before_step()` after the step's last backward, before the
    gradient norm and update (the online target all-reduces its prototypes' gradients there); `no_sync()` (DDP's)
    around the forward and backward of every micro-batch but a step's last, so gradients are all-reduced once per
    step; `stop()` asked after each step at the host syncs: when it says so the epoch ends there (a preemption)."""

    on_step: Callable[[int, dict[str, Any]], None] | None = None
    before_step: Callable[[], None] | None = None
    no_sync: Callable[[], contextlib.AbstractContextManager[Any]] | None = None
    stop: Callable[[], bool] | None = None


@dataclass(frozen=True)
class LossCheck:
    """The NaN guard's and the host reads' settings (see `run_epoch`): `sync_every` steps between host reads of the
    loss; `reduce` / `reduce_tensor` map a read value / the stacked pending losses over processes (under DDP their
    mean, so every process stops at the same step); every `grad_norm_every`-th step (0 = never) also reports the
    gradient's global L2 norm (one host sync)."""

    sync_every: int = 1
    reduce: Callable[[float], float] | None = None
    reduce_tensor: Callable[[torch.Tensor], torch.Tensor] | None = None
    grad_norm_every: int = 0


@dataclass(frozen=True)
class Bar:
    """The progress bar: shown when `show`, titled `desc`, its postfix from `postfix(loss, extras)`."""

    desc: str = ""
    show: bool = False
    postfix: Callable[[float, dict[str, Any]], dict[str, Any]] | None = None


@dataclass
class EpochResult:
    step: int  # optimizer steps done after the epoch
    losses: list[float] = field(default_factory=list)  # one per micro-batch
    stopped: bool = False  # `stop()` said so after step `step`: the rest of the epoch was not run


def run_epoch(
    batches: Iterable[Any],
    loss_fn: LossFn,
    stepper: Stepper,
    *,
    step: int,
    n_batches: int,
    accum: int = 1,
    hooks: StepHooks = StepHooks(),
    check: LossCheck = LossCheck(),
    bar: Bar = Bar(),
) -> EpochResult:
    """Run up to `n_batches` micro-batches (a multiple of `accum`); returns the step count and per-batch losses.

    lr(step) is set (`stepper.schedule`) before the first micro-batch of each step; the loss is divided by `accum`
    before backward, so a step's gradient is the mean over its micro-batches. `hooks` run around each step
    (StepHooks); the `check.grad_norm_every`-th steps put the gradient's global L2 norm under "grad_norm" in the
    extras.

    The NaN guard. With `check.sync_every` = 1 each loss value is read on the host (one sync per micro-batch), mapped
    by `check.reduce` and a non-finite one raises NonFiniteLoss before it reaches the weights. With `sync_every` = N
    > 1 the losses stay on the device and are read together (mapped by `check.reduce_tensor`) after every N-th step
    and at the end of the epoch: "loss" is in the extras of those steps only, and a non-finite loss raises
    NonFiniteLoss naming its step at the next read, before the epoch ends, so it can reach the weights in memory but
    never a checkpoint written after the epoch.
    """
    res = EpochResult(step)
    opt, schedule, scaler = stepper.opt, stepper.schedule, stepper.scaler
    sync_every, no_sync = check.sync_every, hooks.no_sync
    pending = _PendingLosses(res, check.reduce_tensor)
    progress = progress_bar(total=n_batches, desc=bar.desc, disable=not bar.show, leave=False)
    try:
        for i, batch in enumerate(batches):
            if i >= n_batches:
                break
            if i % accum == 0:
                set_lr(opt, schedule(res.step))
            local = no_sync is not None and (i + 1) % accum != 0  # not the step's last micro-batch
            with no_sync() if local else contextlib.nullcontext():  # type: ignore[misc]
                loss, extras = loss_fn(batch)
                value = (
                    _checked(loss, res.step, check.reduce)
                    if sync_every == 1
                    else cast("float | None", pending.add(loss.detach(), res.step))
                )
                scaled = loss / accum
                (scaler.scale(scaled) if scaler is not None else scaled).backward()  # type: ignore[no-untyped-call]  # torch's Tensor.backward is unannotated
            if value is not None:
                res.losses.append(value)
                extras["loss"] = value
            if (i + 1) % accum == 0:
                if hooks.before_step is not None:
                    hooks.before_step()
                if check.grad_norm_every and (res.step + 1) % check.grad_norm_every == 0:
                    extras["grad_norm"] = grad_norm(opt, scaler)
                _optimizer_step(opt, scaler)
                res.step += 1
                if sync_every > 1 and res.step % sync_every == 0:
                    value = extras["loss"] = pending.flush()
                if hooks.on_step is not None:
                    hooks.on_step(res.step, extras)
                if hooks.stop is not None and res.step % sync_every == 0 and hooks.stop():
                    res.stopped = True
                    break
            if bar.postfix is not None and value is not None:
                progress.set_postfix(bar.postfix(value, extras))
            progress.update()
        pending.flush()
    finally:
        progress.close()
    return res


def _checked(loss: torch.Tensor, step: int, reduce: Callable[[float], float] | None) -> float:
    value = float(loss.detach()) if reduce is None else reduce(float(loss.detach()))
    if not math.isfinite(value):
        raise NonFiniteLoss(step, value)
    return value


class _PendingLosses:
    """Loss tensors on the device since the last host read, with the optimizer step each belongs to."""

    def __init__(self, res: EpochResult, reduce_tensor: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        self.res, self.reduce = res, reduce_tensor
        self.losses: list[torch.Tensor] = []
        self.steps: list[int] = []

    def add(self, loss: torch.Tensor, step: int) -> None:
        self.losses.append(loss.float())
        self.steps.append(step)

    def flush(self) -> float | None:
        """Read every pending loss in one host sync; raise NonFiniteLoss for the first non-finite one."""
        if not self.losses:
            return None
        values: Any = torch.stack(self.losses)  # (n,), then its values as floats
        values = (values if self.reduce is None else self.reduce(values)).tolist()
        for step, value in zip(self.steps, values, strict=True):
            if not math.isfinite(value):
                raise NonFiniteLoss(step, value)
        self.res.losses.extend(values)
        self.losses, self.steps = [], []
        return cast(float, values[-1])


def grad_norm(opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> float:
    """The global L2 norm of the gradients the optimizer is about to apply (unscaled under a GradScaler)."""
    grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
    norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
    return norm / scaler.get_scale() if scaler is not None else norm


def _optimizer_step(opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    opt.zero_grad(set_to_none=True)
