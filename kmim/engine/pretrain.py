"""The pretraining loop shared by K-MIM (token targets) and the MAE baseline (pixel targets).

The trainer receives a ready tokenizer (or None for pixel targets): loading or fitting one is the caller's job
(kmim.fit.prepare_tokenizer), so constructing a trainer never runs K-means or trains a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kmim.config import RunConfig
from kmim.data import build_dataset
from kmim.data.sampling import GlobalBatchSampler, SeededViews
from kmim.engine.checkpoint import save_checkpoint
from kmim.engine.dist import all_reduce_sum, get_rank, get_world_size, is_main, wrap_for_training
from kmim.engine.loader import make_train_loader
from kmim.engine.objectives import compute_targets, mim_loss, select_patches
from kmim.engine.optim import build_optimizer, effective_lr
from kmim.engine.trainer import (
    EpochHook,
    Trainer,
    autocast_ctx,
    check_new_run_dir,
    check_resume,
    reopen_run,
    start_run,
    write_results,
)
from kmim.errors import KmimError
from kmim.models import build_mim, encoder_kwargs, resolve_spec
from kmim.tokenizers import Tokenizer, to_blob


class Pretrainer(Trainer):
    """Owns the model, optimizer, data and run directory of one pretraining run."""

    kind = "pretrain"

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: Path,
        tokenizer: Tokenizer | None,
        progress: bool = True,
        resume_from: dict | None = None,
    ) -> None:
        super().__init__(cfg, run_dir, cfg.train, progress)
        spec = resolve_spec(cfg.model)
        t = cfg.train
        ds, self.info = build_dataset(cfg.data, "train", train=True, min_side=spec.patch_size)
        self.views = SeededViews(ds, t.seed, (cfg.data.img_size // spec.patch_size) ** 2)
        self.sampler = GlobalBatchSampler(len(ds), self.plan.micro, t.seed, get_rank(), get_world_size())
        self.enc_kwargs = encoder_kwargs(spec, cfg.data.img_size, self.info.channels)
        self.tok = self._check_tokenizer(tokenizer, spec.patch_size)
        out_dim = self.tok.k if self.tok is not None else spec.patch_size**2 * self.info.channels
        self.model = build_mim(spec, cfg.data.img_size, self.info.channels, out_dim).to(self.device)
        self.forward = wrap_for_training(self.model, self.device, t.compile)
        self.lr = effective_lr(t.base_lr, self.plan.global_batch)
        cuda = self.device.type == "cuda"
        self.opt = build_optimizer(self.model, self.lr, t.weight_decay, (t.beta1, t.beta2), fused=cuda)
        self.scaler = torch.amp.GradScaler("cuda") if cuda and t.amp == "fp16" else None
        self.loader = make_train_loader(self.views, self.sampler, cfg.data, self.device)
        self._reset_health()
        self._ready(resume_from)

    def _reset_health(self) -> None:
        """Target health counters of the epoch, kept on the device (no host sync per step)."""
        k = self.tok.k if self.tok is not None else 1
        self._target_counts = torch.zeros(k, dtype=torch.long, device=self.device)  # (K,) masked targets per id
        self._target_hits = torch.zeros((), dtype=torch.long, device=self.device)  # argmax == target

    def _check_tokenizer(self, tok: Tokenizer | None, patch_size: int) -> Tokenizer | None:
        if self.cfg.train.target != "tokens":
            return None
        if tok is None:
            raise KmimError("train.target=tokens needs a tokenizer: set tokenizer.path or let kmim fit one")
        where = str(self.cfg.tokenizer.path or "tokenizer")
        tok.check_compatible(patch_size, self.info.channels, self.info.mean, self.info.std, where=where)
        return tok.to(self.device)

    def write_inputs(self) -> None:
        if self.tok is not None:
            self.tok.save(self.run_dir / "tokenizer.pt")

    @property
    def encoder_spec(self) -> dict[str, Any]:
        return {"timm_name": resolve_spec(self.cfg.model).timm_name, "timm_kwargs": self.enc_kwargs}

    def _micro_step(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict[str, Any]]:
        t = self.cfg.train
        imgs, labels, noise = (x.to(self.device, non_blocking=True) for x in batch)  # (B, C, H, W), (B,), (B, L)
        targets = compute_targets(imgs, t.target, self.model.patch_size, self.tok, t.norm_pix, labels)  # no grad
        with autocast_ctx(t.amp, self.device):
            pred, ids = self.forward(imgs, t.mask_ratio, noise, masked_only=True)  # (B, M, out), (B, M)
            targets = select_patches(targets, ids)  # (B, M) ids or (B, M, p*p*C) pixels
            mask = torch.ones(ids.shape, device=ids.device)  # every selected patch is a masked one
            loss = mim_loss(pred, targets, mask, t.target, t.label_smoothing)
        if self.tok is not None:
            with torch.no_grad():
                self._target_counts += torch.bincount(targets.flatten(), minlength=self.tok.k)
                self._target_hits += (pred.argmax(dim=-1) == targets).sum()
        self.state.images += imgs.shape[0] * get_world_size()
        return loss, {}

    def _epoch_metrics(self) -> dict[str, float]:
        """Target health of token runs, over the epoch's masked patches of every process: the fraction of the K ids
        that were targets, their perplexity exp(H(p)) with p the id frequencies (K at uniform use, 1 at collapse),
        and the model's top-1 (%) on the masked ids."""
        if self.tok is None:
            return {}
        counts = all_reduce_sum(self._target_counts).double()  # (K,)
        hits = float(all_reduce_sum(self._target_hits))
        self._reset_health()
        total = float(counts.sum())
        p = counts[counts > 0] / max(total, 1.0)
        return {"targets_used": float((counts > 0).double().mean()),
                "targets_perplexity": float(torch.exp(-(p * p.log()).sum())),
                "masked_top1": 100.0 * hits / max(total, 1.0)}  # fmt: skip

    def checkpoint_state(self) -> dict[str, Any]:
        tok = None if self.tok is None else to_blob(self.tok)
        return {**super().checkpoint_state(), "encoder": self.encoder_spec, "tokenizer": tok}

    def _finish(self) -> dict[str, Any]:
        if is_main():
            enc_state = self.model.encoder.state_dict()
            save_checkpoint(self.run_dir / "encoder.pt", {"encoder": self.encoder_spec, "state_dict": enc_state})
        results = {"target": self.cfg.train.target, **super()._finish(), "encoder": self.encoder_spec}
        write_results(self.run_dir, results)
        return results


def pretrain(
    cfg: RunConfig,
    tokenizer: Tokenizer | None,
    progress: bool = True,
    overwrite: bool = False,
    on_epoch: EpochHook | None = None,
    scan: dict | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Run a fresh pretraining; returns the run dir and its results. Bad inputs fail before anything is written.
    `on_epoch(row)`, if given, is called with each epoch's metrics row; `scan` is the clean image scan to record."""
    run_dir = Path(cfg.out_dir) / cfg.name
    check_new_run_dir(run_dir, cfg, overwrite)
    trainer = Pretrainer(cfg, run_dir, tokenizer, progress)
    if on_epoch is not None:
        trainer.epoch_hooks.append(on_epoch)
    start_run(trainer, overwrite, scan)
    return run_dir, trainer.run()


def resume(
    run_dir: Path,
    cfg: RunConfig,
    ckpt: dict[str, Any],
    tokenizer: Tokenizer | None,
    progress: bool = True,
    on_epoch: EpochHook | None = None,
    scan: dict | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Continue the run in run_dir from the checkpoint `ckpt` under `cfg` (its saved config plus overrides)."""
    check_resume(ckpt["config"], cfg, ckpt["train_state"]["epoch"])
    trainer = Pretrainer(cfg, run_dir, tokenizer, progress, resume_from=ckpt)
    if on_epoch is not None:
        trainer.epoch_hooks.append(on_epoch)
    reopen_run(run_dir, cfg, ckpt["train_state"]["epoch"], scan)
    return run_dir, trainer.run()


__all__ = ["Pretrainer", "pretrain", "resume"]
