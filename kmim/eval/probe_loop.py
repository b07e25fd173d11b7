"""What the probes that train through the frozen encoder share (MAE's LARS probe, the attentive probe): the global
batch split over the processes with its sampler and loader (`probe_data`), and the epoch loop that continues from
a checkpoint, stops cleanly on a preemption signal, saves after every epoch and shows progress (`train_epochs`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from kmim.config import BATCH_FIELDS, BatchPlan, RunConfig, plan_batch
from kmim.data.loader import make_train_loader
from kmim.data.sampling import GlobalBatchSampler, SeededViews
from kmim.dist import get_rank, get_world_size
from kmim.engine.preempt import catch_preemption
from kmim.errors import KmimError
from kmim.eval.resume import Position, ProbeCheckpoint
from kmim.progress import progress_bar


@dataclass
class ProbeData:
    plan: BatchPlan
    sampler: GlobalBatchSampler
    loader: DataLoader[Any]
    steps: int  # optimizer steps per epoch


def probe_data(
    cfg: RunConfig, section: str, train: Dataset[Any], *, device: torch.device, what: str = "training images"
) -> ProbeData:
    """The probe's global batch (BATCH_FIELDS[section]) split over this launch's processes, over `train` in the
    order of cfg.train.seed; one KmimError line when the batch exceeds the images (`what` names them)."""
    plan = plan_batch(cfg, section, get_world_size())
    n = len(cast(Sized, train))
    sampler = GlobalBatchSampler(n, plan.micro, cfg.train.seed, rank=get_rank(), world_size=get_world_size())
    steps = len(sampler) // plan.accum
    if steps == 0:
        field = f"{BATCH_FIELDS[section][0]}.{BATCH_FIELDS[section][1]}"
        raise KmimError(
            f"{field}={plan.global_batch} exceeds the {n} {what}: the probe would take no step; lower {field}"
        )
    loader = make_train_loader(SeededViews(train, cfg.train.seed, 0), sampler, cfg.data, device=device)
    return ProbeData(plan, sampler, loader, steps)


StepFn = Callable[[Iterator[Any], int], float]  # (this epoch's batches, global step) -> loss


def train_epochs(
    data: ProbeData,
    ck: ProbeCheckpoint,
    heads: nn.Module,
    *,
    opt: torch.optim.Optimizer,
    epochs: int,
    name: str,
    announce: str,
    step: StepFn,
    end_epoch: Callable[[int], str] = lambda epoch: "",
    history: list[float] | None = None,
    progress: bool = True,
) -> None:
    """Epochs of `step` from where `ck` left off (a continued epoch skips the batches it already took), after the
    line `announce`; `end_epoch(epoch)` runs after each epoch, before the save, and returns words for its progress
    line; `history` (the LARS probe's test top-1 per epoch) is restored and saved with the position."""
    pos = ck.restore(heads, opt)
    hist = history if history is not None else []
    hist[:] = pos.history
    if progress:
        again = f", continuing at epoch {pos.epoch + 1} step {pos.step}" if pos.epoch or pos.step else ""
        tqdm.write(f"{announce}{again}")
    t0, first = time.perf_counter(), pos.epoch
    with catch_preemption():
        for epoch in range(pos.epoch, epochs):
            start = pos.step if epoch == first else 0
            data.sampler.set_epoch(epoch, skip=start * data.plan.accum)
            batches, loss = iter(data.loader), math.nan
            desc = f"{name} {epoch + 1}/{epochs}"
            bar = progress_bar(range(start, data.steps), desc=desc, disable=not progress, leave=False)
            for s in bar:
                loss = step(batches, epoch * data.steps + s)
                bar.set_postfix(loss=f"{loss:.4f}")
                ck.check_stop(heads, opt, Position(epoch, s + 1, hist), name=name)
            words = end_epoch(epoch)
            ck.save(heads, opt, Position(epoch + 1, 0, hist))
            if progress:
                left = (epochs - epoch - 1) * (time.perf_counter() - t0) / (epoch + 1 - first) / 60
                tqdm.write(f"{desc}  loss {loss:.4f}{words}  (about {left:.0f} min left)")
