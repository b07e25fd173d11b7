"""The pretraining loop shared by K-MIM (token targets), the MAE baseline (pixel targets) and online clustering
targets (CAPI-style).

The trainer receives a ready tokenizer (or None for pixel and online targets): loading or fitting one is the
caller's job (kmim.fit.prepare_tokenizer), so constructing a trainer never runs K-means or trains a model. What the
masked patches predict, with its loss, hooks, statistics and checkpoint state, is the run's target object
(kmim.engine.targets: tokens, pixels, online clusters); a step normalizes the uint8 batch on the device and asks the
target for the loss.
"""

from __future__ import annotations

from collections.abc import Sized
from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.data import Subset

from kmim.data import build_dataset, make_loader
from kmim.data.loader import make_train_loader
from kmim.data.sampling import GlobalBatchSampler, SeededViews
from kmim.data.transforms import normalize_batch
from kmim.dist import (
    get_rank,
    get_world_size,
    is_main,
    wrap_for_training,
)
from kmim.engine.checkpoint import save_checkpoint
from kmim.engine.optim import build_optimizer, effective_lr
from kmim.engine.plan import RunPlan
from kmim.engine.targets import build_target, out_dim
from kmim.engine.trainer import (
    EpochHook,
    Trainer,
    autocast_ctx,
    reopen_run,
    start_run,
    write_results,
)
from kmim.metrics import token_metrics
from kmim.models import EncoderSpec, MaskedImageModel, build_mim, encoder_kwargs
from kmim.runs import RunDir, check_resume
from kmim.tokenizers import Tokenizer


class Pretrainer(Trainer):
    """Owns the model, optimizer, data and run directory of one pretraining run; the target (kmim.engine.targets)
    owns what the masked patches are trained to predict."""

    kind = "pretrain"
    model: MaskedImageModel

    def __init__(
        self,
        plan: RunPlan,
        run_dir: Path,
        tokenizer: Tokenizer | None,
        *,
        progress: bool = True,
        resume_from: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(plan, run_dir, progress=progress)
        cfg, spec, t = plan.cfg, plan.spec, plan.cfg.train
        ds, self.info = build_dataset(cfg.data, "train", train=True, min_side=spec.patch_size)
        self.views = SeededViews(ds, t.seed, plan.patches, python_rngs=False)
        self.sampler = GlobalBatchSampler(
            len(cast(Sized, ds)), self.batch.micro, t.seed, rank=get_rank(), world_size=get_world_size()
        )
        self.enc_kwargs = encoder_kwargs(spec, cfg.data.img_size, self.info.channels)
        dim = out_dim(cfg, tokenizer, patch_size=spec.patch_size, channels=self.info.channels)
        self.model = build_mim(spec, cfg.data.img_size, self.info.channels, out_dim=dim).to(self.device)
        self.target = build_target(
            cfg, tokenizer, model=self.model, info=self.info, spec=self.encoder_spec, device=self.device
        )
        self.forward = wrap_for_training(self.model, self.device, self.cfg.run.compile)
        self.lr = effective_lr(t.base_lr, self.batch.global_batch)
        cuda = self.device.type == "cuda"
        self.opt = build_optimizer(self.model, self.lr, t.weight_decay, betas=(t.beta1, t.beta2), fused=cuda)
        for group in self.target.param_groups(self.lr):
            self.opt.add_param_group(group)
        self._health_cache: dict[str, float] | None = None
        self._health_subset: tuple[Subset[Any], int] | None = None  # the fixed labelled images and the class count
        self.scaler = torch.amp.GradScaler("cuda") if cuda and t.amp == "fp16" else None
        self.loader = make_train_loader(self.views, self.sampler, cfg.data, device=self.device)
        self._ready(resume_from)

    def write_inputs(self) -> None:
        self.target.write_inputs(self.run_dir)

    def _gather_epoch_counters(self) -> None:
        if self.target.health is not None:
            self.target.health.gather()

    def _restore(self, ckpt: dict[str, Any]) -> None:
        super()._restore(ckpt)
        self.target.restore(ckpt)
        counters = ckpt.get("epoch_counters")  # written mid-epoch on a preemption: the epoch's health so far, summed
        if counters is not None and is_main() and self.target.health is not None:  # over processes onto rank 0
            for mine, saved in zip(self.target.health.tensors(), counters, strict=True):
                mine.copy_(saved)

    @property
    def encoder_spec(self) -> EncoderSpec:
        return EncoderSpec(self.plan.spec.timm_name, self.enc_kwargs)

    def _micro_step(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict[str, Any]]:
        imgs, labels, noise = (x.to(self.device, non_blocking=True) for x in batch)  # (B, C, H, W), (B,), (B, L)
        imgs = normalize_batch(imgs, self.info.mean, self.info.std)  # uint8 -> float32 on the device
        loss = self.target.loss(self.forward, imgs, labels=labels, noise=noise)
        self.state.images += imgs.shape[0] * get_world_size()
        return loss, {}

    def _before_step(self) -> None:
        self.target.before_step()

    def _on_step(self, step: int) -> None:
        t, spe = self.cfg.train, self.steps_per_epoch
        self.target.after_step(step, t.epochs * spe, t.warmup_epochs * spe)

    def _epoch_metrics(self) -> dict[str, float]:
        """The target's health over the epoch (kmim.engine.targets.Health); with train.health_images, TCAS / NMI /
        usage of the targets' hard ids on a fixed labelled subset (`_token_health`)."""
        out = self.target.epoch_metrics()
        if out and self.cfg.train.health_images > 0 and is_main():
            out.update(self._token_health())
        return out

    @torch.no_grad()
    def _token_health(self) -> dict[str, float]:
        """TCAS, NMI, usage and perplexity of the targets' hard ids over every patch of a fixed subset of
        train.health_images training images (seeded by train.seed, eval view), against the images' labels. An
        offline tokenizer never changes, so its values are computed once. Rank 0 only; no global RNG is drawn."""
        online = self.target.online
        if self._health_cache is not None and not online:
            return self._health_cache
        tok = self.target.encoder()
        assert tok is not None
        if self._health_subset is None:  # built once: an ImageFolder is not rescanned every epoch
            ds, info = build_dataset(self.cfg.data, "train", min_side=self.model.patch_size)
            n = min(self.cfg.train.health_images, len(ds))  # type: ignore[arg-type]
            idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(self.cfg.train.seed))[:n]  # type: ignore[arg-type]
            self._health_subset = (Subset(ds, sorted(idx.tolist())), len(info.classes))
        subset, num_classes = self._health_subset
        tokens, labels = [], []
        with torch.random.fork_rng(devices=[]):
            loader = make_loader(subset, self.cfg.eval.batch_size, shuffle=False, num_workers=self.cfg.data.num_workers)
            for imgs, y in loader:
                x = imgs.to(self.device)
                amp = self.cfg.train.amp if online else "off"  # as each computes its training targets
                with autocast_ctx(amp, self.device):
                    ids = tok.encode(x, y.to(self.device) if tok.needs_labels else None)  # (B, L)
                tokens.append(ids.cpu())
                labels.append(y)
        m = token_metrics(torch.cat(tokens).numpy(), torch.cat(labels).numpy(), tok.k, num_classes=num_classes)
        self._health_cache = {f"tok_{key}": float(m[key]) for key in ("tcas", "nmi", "usage", "perplexity")}
        return self._health_cache

    def checkpoint_state(self) -> dict[str, Any]:
        health = self.target.health
        mid_epoch = self.state.epoch_step > 0 and health is not None  # a preemption: the epoch's counters so far
        return {
            **super().checkpoint_state(),
            "encoder": self.encoder_spec.to_dict(),
            **self.target.checkpoint(),
            "epoch_counters": [v.cpu() for v in health.tensors()] if mid_epoch and health else None,
        }

    def _finish(self) -> dict[str, Any]:
        if is_main():
            enc_state = self.model.encoder.state_dict()
            save_checkpoint(
                self.run_dir / "encoder.pt", {"encoder": self.encoder_spec.to_dict(), "state_dict": enc_state}
            )
            self.target.finish(self.run_dir)
        results = {"target": self.cfg.train.target, **super()._finish(), "encoder": self.encoder_spec.to_dict()}
        write_results(self.run_dir, results)
        return results


def pretrain(
    plan: RunPlan,
    tokenizer: Tokenizer | None,
    progress: bool = True,
    *,
    overwrite: bool = False,
    on_epoch: EpochHook | None = None,
    scan: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Run a fresh pretraining; returns the run dir and its results. Bad inputs fail before anything is written.
    `on_epoch(row)`, if given, is called with each epoch's metrics row; `scan` is the clean image scan to record."""
    run_dir = Path(plan.cfg.out_dir) / plan.cfg.name
    RunDir(run_dir).check_new(plan.cfg, overwrite)
    trainer = Pretrainer(plan, run_dir, tokenizer, progress=progress)
    if on_epoch is not None:
        trainer.epoch_hooks.append(on_epoch)
    start_run(trainer, overwrite, scan)
    return run_dir, trainer.run()


def resume(
    run_dir: Path,
    plan: RunPlan,
    ckpt: dict[str, Any],
    *,
    tokenizer: Tokenizer | None,
    progress: bool = True,
    on_epoch: EpochHook | None = None,
    scan: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Continue the run in run_dir from the checkpoint `ckpt` under the plan of its saved config plus overrides."""
    check_resume(ckpt["config"], plan.cfg, ckpt["train_state"]["epoch"])
    trainer = Pretrainer(plan, run_dir, tokenizer, progress=progress, resume_from=ckpt)
    if on_epoch is not None:
        trainer.epoch_hooks.append(on_epoch)
    reopen_run(run_dir, plan.cfg, ckpt["train_state"]["epoch"], scan=scan)
    return run_dir, trainer.run()


__all__ = ["Pretrainer", "pretrain", "resume"]
