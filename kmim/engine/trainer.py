"""What every run of kmim's training commands shares: one run directory, the data order, the epoch loop on the
loop core, metrics, checkpoints (every epoch; numbered every `save_every`) and an exact resume.

A subclass (pretraining, fine-tuning) builds the model, optimizer and data, and supplies `_micro_step`; `hp` holds
its schedule settings (epochs, warmup_epochs, batch_size, micro_batch_size, min_lr, amp, save_every, log_every).
`batch_size` is the global batch: the run's plan (`kmim.engine.plan.RunPlan`, resolved at the door) splits it over
the processes and accumulation steps (`batch`), so 1, 8 or 32 processes run the same recipe.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from kmim.config import RunConfig, config_to_dict
from kmim.data.sampling import GlobalBatchSampler
from kmim.dist import (
    all_reduce_mean,
    barrier,
    get_world_size,
    is_main,
    mean_over_processes,
)
from kmim.engine.checkpoint import save_checkpoint
from kmim.engine.loop import Bar, LossCheck, NonFiniteLoss, StepHooks, Stepper, run_epoch
from kmim.engine.optim import Schedule
from kmim.engine.plan import RunPlan
from kmim.engine.preempt import Preempted, catch_preemption, signal_name, stop_requested
from kmim.errors import KmimError
from kmim.progress import is_terminal
from kmim.runs import RunDir
from kmim.tracking import Tracker

EpochHook = Callable[[dict[str, Any]], None]  # called with each epoch's metrics row


def autocast_ctx(amp: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16/fp16 autocast on CUDA only; fp32 on CPU (bf16 autocast is ~13x slower on this CPU)."""
    if device.type != "cuda" or amp == "off":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.float16 if amp == "fp16" else torch.bfloat16)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)


@dataclass
class TrainState:
    epoch: int = 0  # next epoch to run
    step: int = 0  # optimizer steps done
    images: int = 0  # images seen
    wall_s: float = 0.0  # training time, summed over resumed sessions
    epoch_step: int = 0  # optimizer steps already done in epoch `epoch` (a checkpoint written on preemption)
    epoch_losses: list[float] = field(default_factory=list)  # their micro-batch losses, for the epoch's mean


class Trainer:
    """Subclasses set model, forward, opt, scaler, sampler (a GlobalBatchSampler), loader and lr, then call
    `_ready(resume_from)`."""

    kind = "run"
    model: torch.nn.Module
    forward: Any
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    sampler: GlobalBatchSampler
    loader: Any
    lr: float

    def __init__(self, plan: RunPlan, run_dir: Path, *, progress: bool = True) -> None:
        self.plan, self.run_dir, self.progress = plan, run_dir, progress
        self.cfg, self.hp, self.section = plan.cfg, plan.hp, plan.section  # section: named in messages
        self.device, self.batch = plan.device, plan.batch
        self.state = TrainState()
        self.epoch_hooks: list[EpochHook] = []  # each gets the epoch's metrics row
        self.tracker: Tracker | None = None  # opened when the run starts (TensorBoard / W&B, rank 0)
        self.wandb_id: str | None = None
        self._rng: torch.Tensor | None = None  # the CPU RNG state a mid-epoch resume restores
        seed_everything(self.hp.seed)

    def _ready(self, resume_from: dict[str, Any] | None) -> None:
        if self.steps_per_epoch == 0:
            raise KmimError(
                f"{self.section}.batch_size={self.hp.batch_size} (the global batch) exceeds the {self.sampler.n} "
                f"training images: lower {self.section}.batch_size"
            )
        if resume_from is not None:
            self._restore(resume_from)
            self.wandb_id = resume_from.get("wandb_id")

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.state = TrainState(**ckpt["train_state"])
        torch.set_rng_state(ckpt["rng"])
        self._rng = ckpt["rng"]
        if ckpt.get("cuda_rng") is not None and torch.cuda.is_available():
            for i, state in enumerate(ckpt["cuda_rng"][: torch.cuda.device_count()]):  # another allocation may show
                torch.cuda.set_rng_state(state, i)  # fewer GPUs than the one that saved (and DDP uses one each)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.sampler) // self.batch.accum

    @property
    def effective_batch(self) -> int:
        return self.batch.global_batch

    def run(self) -> dict[str, Any]:
        if self.progress and is_main():
            tqdm.write(f"{self.batch.describe()}, peak lr {self.lr:.3g}")
        resumed = self.state.step if self.state.step > 0 else None
        self.tracker = Tracker(self.run_dir, self.cfg, is_main(), wandb_id=self.wandb_id, resume_step=resumed)
        self.wandb_id = self.tracker.wandb_id
        try:
            with catch_preemption():
                return self._run_epochs()
        finally:
            self.tracker.close()

    def _run_epochs(self) -> dict[str, Any]:
        assert self.tracker is not None
        while self.state.epoch < self.hp.epochs:
            self._epoch(self.state.epoch)
            self.state.epoch += 1
            self._after_epoch(self.state.epoch)
            self.tracker.flush()
            self._save()
        out = self._finish()
        barrier()  # every rank returns once rank 0 has written the run directory: callers may read it
        return out

    def _epoch(self, epoch: int) -> None:
        hp, st, spe = self.hp, self.state, self.steps_per_epoch
        schedule = Schedule(self.lr, hp.epochs * spe, hp.warmup_epochs * spe, hp.min_lr)
        done = st.epoch_step  # > 0: resumed mid-epoch after a preemption
        self.sampler.set_epoch(epoch, skip=done * self.batch.accum)
        self.model.train()
        t0, images0 = time.perf_counter(), st.images
        batches = iter(self.loader)  # made first: a DataLoader iterator draws its base seed from the global RNG
        if done and self._rng is not None:
            torch.set_rng_state(self._rng)  # so the rest of the epoch draws as the uninterrupted run did

        step0, lines = st.step, self.progress and is_main() and not is_terminal()

        def img_s() -> float:
            return (st.images - images0) / max(time.perf_counter() - t0, 1e-9)

        def on_step(step: int, extras: dict[str, Any]) -> None:
            self._on_step(step)
            if step % hp.log_every == 0:
                grad = {"grad_norm": extras["grad_norm"]} if "grad_norm" in extras else {}
                row = {"step": step, "epoch": epoch, "loss": extras["loss"], "lr": schedule(step - 1), "img_s": img_s()}
                self._log({**row, **grad})
                if lines:  # a log file: MAE's MetricLogger-style line instead of a bar
                    left = (time.perf_counter() - t0) / (step - step0) * (hp.epochs * spe - step)
                    tqdm.write(
                        f"epoch {epoch + 1}/{hp.epochs} step {step - step0}/{spe} loss {extras['loss']:.4f} "
                        f"lr {row['lr']:.3g} {row['img_s']:.0f} img/s eta {left / 60:.1f} min",
                        file=sys.stderr,
                    )

        def postfix(loss: float, _extras: dict[str, Any]) -> dict[str, str]:
            return {"loss": f"{loss:.4f}", "img_s": f"{img_s():.0f}"}

        try:
            res = run_epoch(
                batches,
                self._micro_step,
                Stepper(self.opt, schedule, self.scaler),
                step=st.step,
                n_batches=(spe - done) * self.batch.accum,
                accum=self.batch.accum,
                hooks=StepHooks(
                    on_step=on_step,
                    before_step=self._before_step,
                    no_sync=getattr(getattr(self, "forward", None), "no_sync", None),  # DDP: one all-reduce a step
                    stop=stop_requested,
                ),
                check=LossCheck(hp.sync_every, mean_over_processes, all_reduce_mean, grad_norm_every=hp.log_every),
                bar=Bar(f"epoch {epoch + 1}/{hp.epochs}", self.progress and is_main() and not lines, postfix),
            )
        except NonFiniteLoss as e:
            raise KmimError(
                f"{e} (epoch {epoch}): {self._last_good()}; lower the learning rate or use amp=off"
            ) from None
        st.step = res.step
        dt = time.perf_counter() - t0
        st.wall_s += dt
        if res.stopped:
            self._preempted(epoch, done + res.step - step0, [*st.epoch_losses, *res.losses])
        losses = [*st.epoch_losses, *res.losses]
        st.epoch_step, st.epoch_losses = 0, []
        mean_loss = sum(losses) / len(losses)  # already means over processes
        row = {
            "epoch": epoch,
            "epoch_loss": mean_loss,
            "epoch_s": dt,
            "img_per_s": (st.images - images0) / dt,
            **self._epoch_metrics(),
        }
        self._log(row)
        for hook in self.epoch_hooks:
            hook(row)
        if self.progress and is_main():
            left = (hp.epochs - epoch - 1) * dt / 60
            tqdm.write(
                f"epoch {epoch + 1}/{hp.epochs}  loss {mean_loss:.4f}  {row['img_per_s']:.0f} img/s  "
                f"(about {left:.0f} min left at this pace)"
            )

    def _preempted(self, epoch: int, epoch_step: int, losses: list[float]) -> None:
        """A preemption signal: last.pt at this step (rank 0; the others wait), then `Preempted`."""
        self.state.epoch_step, self.state.epoch_losses = epoch_step, losses
        self._gather_epoch_counters()
        if is_main():
            save_checkpoint(self.run_dir / "checkpoints" / "last.pt", self.checkpoint_state())
        barrier()
        raise Preempted(
            f"stopped on {signal_name()} at epoch {epoch + 1} step {epoch_step} of {self.steps_per_epoch}; wrote "
            f"{self.run_dir / 'checkpoints' / 'last.pt'}: run the same command again to continue"
        )

    def _gather_epoch_counters(self) -> None:
        """Before a mid-epoch checkpoint, on every process: move the epoch's per-process counters to rank 0."""

    def _micro_step(self, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        raise NotImplementedError

    def _epoch_metrics(self) -> dict[str, float]:
        """Extra values of the epoch's metrics row (pretraining on tokens: the target health); called once per
        epoch on every process."""
        return {}

    def write_inputs(self) -> None:
        """Files a fresh run directory gets besides config.yaml and env.json (pretraining: its tokenizer)."""

    def _on_step(self, step: int) -> None:
        """Hook after each optimizer step (fine-tuning updates its EMA here)."""

    def _before_step(self) -> None:
        """Hook after a step's last backward, before the update (gradients outside the DDP module are reduced)."""

    def _after_epoch(self, epochs_done: int) -> None:
        """Hook after each epoch, before its checkpoint (fine-tuning evaluates here)."""

    def _last_good(self) -> str:
        last = self.run_dir / "checkpoints" / "last.pt"
        if last.is_file():
            return f"the last good checkpoint {last} (after epoch {self.state.epoch}) is kept untouched"
        return "no checkpoint was written yet"

    def _log(self, row: dict[str, Any]) -> None:
        if is_main():
            RunDir(self.run_dir).log(row)
            if self.tracker is not None:
                self.tracker.log(row, row.get("step", self.state.step))

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything needed to resume the run (config, RNG state included); subclasses add what they need."""
        return {
            "kind": self.kind,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "config": config_to_dict(self.cfg),
            "train_state": vars(self.state).copy(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "wandb_id": self.wandb_id,
        }

    def _save(self) -> None:
        if not is_main():
            return
        state = self.checkpoint_state()
        ckpt_dir = self.run_dir / "checkpoints"
        e = self.state.epoch
        numbered = e % self.hp.save_every == 0 or e == self.hp.epochs
        if numbered:  # first: a kill leaves last.pt behind, so the resume redoes this epoch and file
            save_checkpoint(ckpt_dir / f"checkpoint-{e:04d}.pt", state)
            keep = self.hp.keep_checkpoints
            for old in RunDir(self.run_dir).numbered_checkpoints()[:-keep] if keep else []:
                old.unlink()  # the oldest numbered ones beyond train.keep_checkpoints
        if numbered or e % self.hp.last_every == 0:  # last.pt is never older than the newest numbered one
            save_checkpoint(ckpt_dir / "last.pt", state)

    def _finish(self) -> dict[str, Any]:
        st = self.state
        return {
            "epochs": st.epoch,
            "steps": st.step,
            "images_seen": st.images,
            "final_epoch_loss": RunDir(self.run_dir).last_epoch_loss(),
            "train_wall_s": round(st.wall_s, 2),
            "img_per_s": round(st.images / max(st.wall_s, 1e-9), 1),
            "effective_batch": self.effective_batch,
            "micro_batch": self.batch.micro,
            "accum_steps": self.batch.accum,
            "world_size": get_world_size(),
            "peak_lr": self.lr,
        }


def start_run(trainer: Trainer, overwrite: bool = False, scan: dict[str, Any] | None = None) -> None:
    """Rank 0 starts the trainer's run directory (kmim.runs.RunDir.start) with its inputs (`write_inputs`)."""
    if is_main():
        RunDir(trainer.run_dir).start(trainer.cfg, overwrite=overwrite, inputs=trainer.write_inputs, scan=scan)


def reopen_run(run_dir: Path, cfg: RunConfig, epoch: int, *, scan: dict[str, Any] | None = None) -> None:
    """Rank 0 reopens a run directory for a resume from epoch `epoch` (kmim.runs.RunDir.reopen)."""
    if is_main():
        RunDir(run_dir).reopen(cfg, epoch, scan)


def write_results(run_dir: Path, results: dict[str, Any]) -> None:
    if is_main():
        RunDir(run_dir).write_results(results)
