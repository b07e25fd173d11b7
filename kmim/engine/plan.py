"""A run's plan: what a training run derives from its config, resolved once at the door (`kmim.launch`) and handed
down to the trainer, so the model spec, the batch split and the device are never re-derived (and a bad device or an
unsplittable batch is refused before a tokenizer is fitted or a file is written)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from kmim.config import BatchPlan, FinetuneConfig, RunConfig, TrainConfig, plan_batch
from kmim.dist import get_world_size, local_device, resolve_device
from kmim.models import ModelSpec, resolve_spec

Section = Literal["train", "finetune"]


@dataclass(frozen=True)
class RunPlan:
    """`cfg` (loaded and checked), the `section` it trains (train: pretraining, finetune), `spec` (cfg.model's
    preset and overrides, the architecture a pretraining builds; a fine-tuning's encoder is its source's), `batch`
    (the section's global batch split over this launch's processes) and `device` (this process's)."""

    cfg: RunConfig
    section: Section
    spec: ModelSpec
    batch: BatchPlan
    device: torch.device

    @property
    def hp(self) -> TrainConfig | FinetuneConfig:
        """The section's settings (schedule, batch, seed)."""
        return self.cfg.train if self.section == "train" else self.cfg.finetune

    @property
    def patches(self) -> int:
        """Patches per image: (img_size / patch_size)^2."""
        return (self.cfg.data.img_size // self.spec.patch_size) ** 2


def resolve_plan(cfg: RunConfig, section: Section) -> RunPlan:
    """The plan of `cfg` for `section` on this launch's processes; one KmimError line for a device that is not here
    or a global batch the processes cannot split."""
    device = local_device(resolve_device(cfg.run.device))
    return RunPlan(cfg, section, resolve_spec(cfg.model), plan_batch(cfg, section, get_world_size()), device)


__all__ = ["RunPlan", "Section", "resolve_plan"]
