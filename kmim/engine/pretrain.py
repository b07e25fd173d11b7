"""The pretraining loop shared by K-MIM (token targets) and the MAE baseline (pixel targets).

The trainer receives a ready tokenizer (or None for pixel targets): loading or fitting one is the caller's job
(kmim.fit.prepare_tokenizer), so constructing a trainer never runs K-means or trains a model.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from kmim.config import RunConfig, config_to_dict, config_to_yaml, load_config
from kmim.data import build_dataset
from kmim.data.sampling import GlobalBatchSampler, SeededViews
from kmim.engine.checkpoint import save_checkpoint
from kmim.engine.dist import get_rank, get_world_size, is_main, wrap_for_training
from kmim.engine.loader import make_train_loader
from kmim.engine.objectives import compute_targets, mim_loss
from kmim.engine.optim import build_optimizer, effective_lr
from kmim.engine.trainer import Trainer, autocast_ctx, drop_metrics_after, write_results
from kmim.errors import KmimError
from kmim.models import build_mim, encoder_kwargs, resolve_spec
from kmim.runinfo import clean_orphan_tmp, environment, write_json, write_text
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
        self.sampler = GlobalBatchSampler(len(ds), t.batch_size, t.seed, get_rank(), get_world_size())
        self.enc_kwargs = encoder_kwargs(spec, cfg.data.img_size, self.info.channels)
        self.tok = self._check_tokenizer(tokenizer, spec.patch_size)
        out_dim = self.tok.k if self.tok is not None else spec.patch_size**2 * self.info.channels
        self.model = build_mim(spec, cfg.data.img_size, self.info.channels, out_dim).to(self.device)
        self.forward = wrap_for_training(self.model, self.device, t.compile)
        self.lr = effective_lr(t.base_lr, t.batch_size, t.accum_steps, get_world_size())
        cuda = self.device.type == "cuda"
        self.opt = build_optimizer(self.model, self.lr, t.weight_decay, (t.beta1, t.beta2), fused=cuda)
        self.scaler = torch.amp.GradScaler("cuda") if cuda and t.amp == "fp16" else None
        self.loader = make_train_loader(self.views, self.sampler, cfg.data, self.device)
        self._ready(resume_from)

    def _check_tokenizer(self, tok: Tokenizer | None, patch_size: int) -> Tokenizer | None:
        if self.cfg.train.target != "tokens":
            return None
        if tok is None:
            raise KmimError("train.target=tokens needs a tokenizer: set tokenizer.path or let kmim fit one")
        where = str(self.cfg.tokenizer.path or "tokenizer")
        tok.check_compatible(patch_size, self.info.channels, self.info.mean, self.info.std, where=where)
        return tok.to(self.device)

    @property
    def encoder_spec(self) -> dict[str, Any]:
        return {"timm_name": resolve_spec(self.cfg.model).timm_name, "timm_kwargs": self.enc_kwargs}

    def _micro_step(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict[str, Any]]:
        t = self.cfg.train
        imgs, labels, noise = (x.to(self.device, non_blocking=True) for x in batch)  # (B, C, H, W), (B,), (B, L)
        targets = compute_targets(imgs, t.target, self.model.patch_size, self.tok, t.norm_pix, labels)  # no grad
        with autocast_ctx(t.amp, self.device):
            pred, mask = self.forward(imgs, t.mask_ratio, noise)
            loss = mim_loss(pred, targets, mask, t.target, t.label_smoothing)
        self.state.images += imgs.shape[0] * get_world_size()
        return loss, {}

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


RESULT_FILES = ("results.json", "encoder.pt", "checkpoints")


def check_new_run_dir(run_dir: Path, cfg: RunConfig, overwrite: bool = False) -> None:
    """A fresh run may use `run_dir` when it is empty or missing, when it holds only the config.yaml of the same
    config (a run killed before its first checkpoint), or with `overwrite`. Anything else is refused."""
    if overwrite or not run_dir.exists():
        return
    if (run_dir / "checkpoints" / "last.pt").exists():
        raise KmimError(f"run directory {run_dir} already holds a run: pass --resume {run_dir}, choose another name= "
                        "or pass --overwrite to replace it")  # fmt: skip
    found = [f for f in RESULT_FILES if (run_dir / f).exists()]
    if found:
        raise KmimError(f"run directory {run_dir} holds results ({', '.join(found)}) but no checkpoint to resume: "
                        "choose another name= or pass --overwrite to replace it")  # fmt: skip
    saved = run_dir / "config.yaml"
    if saved.is_file() and saved.read_text() != config_to_yaml(cfg):
        raise KmimError(f"run directory {run_dir} was started with another config ({saved}): choose another name= "
                        "or pass --overwrite to replace it")  # fmt: skip


def start_run(trainer: Trainer, overwrite: bool = False) -> None:
    """Create the run directory and write config.yaml, env.json and the tokenizer (after all inputs checked out);
    with `overwrite`, whatever the folder held is removed first. Rank 0 only."""
    if not is_main():
        return
    run_dir = trainer.run_dir
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    clean_orphan_tmp(run_dir)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    write_text(run_dir / "config.yaml", config_to_yaml(trainer.cfg))
    write_json(run_dir / "env.json", environment())
    tok = getattr(trainer, "tok", None)
    if tok is not None:
        tok.save(run_dir / "tokenizer.pt")


def pretrain(
    cfg: RunConfig, tokenizer: Tokenizer | None, progress: bool = True, overwrite: bool = False
) -> tuple[Path, dict[str, Any]]:
    """Run a fresh pretraining; returns the run dir and its results. Bad inputs fail before anything is written."""
    run_dir = Path(cfg.out_dir) / cfg.name
    check_new_run_dir(run_dir, cfg, overwrite)
    trainer = Pretrainer(cfg, run_dir, tokenizer, progress)
    start_run(trainer, overwrite)
    return run_dir, trainer.run()


# what a resume may not change: the architecture, the data the weights were trained on, the objective
FROZEN_ON_RESUME = ("model", "data.name", "data.img_size", "train.target", "train.norm_pix", "tokenizer")


def check_resume(saved: dict[str, Any], cfg: RunConfig, done_epochs: int, section: str = "train") -> None:
    """Refuse overrides that a checkpoint cannot continue under (one line naming the field); `section` holds the
    run's epochs (train, or finetune for a fine-tuning run)."""
    saved, new = config_to_dict(load_config(None, (), base=saved)), config_to_dict(cfg)  # same defaults and layout
    for path in FROZEN_ON_RESUME:
        old_v, new_v = _at(saved, path), _at(new, path)
        if old_v != new_v:
            raise KmimError(f"--resume cannot change {path} (checkpoint: {old_v}, now: {new_v}): start a new run "
                            "with another name= instead")  # fmt: skip
    epochs = getattr(cfg, section).epochs
    if epochs < done_epochs:
        raise KmimError(f"{section}.epochs={epochs} is below the {done_epochs} epochs the checkpoint already "
                        f"trained: a resume can keep or extend the run, not shorten it")  # fmt: skip


def _at(d: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        d = d.get(part, {}) if isinstance(d, dict) else {}
    return d


def resume(
    run_dir: Path, cfg: RunConfig, ckpt: dict[str, Any], tokenizer: Tokenizer | None, progress: bool = True
) -> tuple[Path, dict[str, Any]]:
    """Continue the run in run_dir from the checkpoint `ckpt` under `cfg` (its saved config plus overrides)."""
    check_resume(ckpt["config"], cfg, ckpt["train_state"]["epoch"])
    trainer = Pretrainer(cfg, run_dir, tokenizer, progress, resume_from=ckpt)
    if is_main():
        for folder in (run_dir, run_dir / "checkpoints"):
            clean_orphan_tmp(folder)
        write_text(run_dir / "config.yaml", config_to_yaml(cfg))
        drop_metrics_after(run_dir / "metrics.jsonl", ckpt["train_state"]["epoch"])
    return run_dir, trainer.run()


__all__ = ["Pretrainer", "check_new_run_dir", "pretrain", "resume", "start_run"]
