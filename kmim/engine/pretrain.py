"""The pretraining loop shared by K-MIM (token targets) and the MAE baseline (pixel targets).

The trainer receives a ready tokenizer (or None for pixel targets): loading or fitting one is the caller's job
(kmim.fit.prepare_tokenizer), so constructing a trainer never runs K-means or trains a model.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from kmim.config import RunConfig, config_to_dict, config_to_yaml, load_config
from kmim.data import build_dataset
from kmim.data.sampling import GlobalBatchSampler, SeededViews
from kmim.engine.checkpoint import save_checkpoint
from kmim.engine.dist import (
    get_rank,
    get_world_size,
    is_main,
    local_device,
    mean_over_processes,
    resolve_device,
    wrap_for_training,
)
from kmim.engine.loader import make_train_loader
from kmim.engine.loop import NonFiniteLoss, run_epoch
from kmim.engine.objectives import compute_targets, mim_loss
from kmim.engine.optim import Schedule, build_optimizer, effective_lr
from kmim.errors import KmimError
from kmim.models import build_mim, encoder_kwargs, resolve_spec
from kmim.runinfo import append_jsonl, clean_orphan_tmp, environment, read_jsonl, write_json, write_text
from kmim.tokenizers import Tokenizer, to_blob


def autocast_ctx(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
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


class Pretrainer:
    """Owns the model, optimizer, data and run directory of one pretraining run."""

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: Path,
        tokenizer: Tokenizer | None,
        progress: bool = True,
        resume_from: dict | None = None,
    ) -> None:
        self.cfg, self.run_dir, self.progress = cfg, run_dir, progress
        self.device = local_device(resolve_device(cfg.train.device))
        seed_everything(cfg.train.seed)
        spec = resolve_spec(cfg.model)
        t = cfg.train
        ds, self.info = build_dataset(cfg.data, "train", train=True, min_side=spec.patch_size)
        self.views = SeededViews(ds, t.seed, (cfg.data.img_size // spec.patch_size) ** 2)
        self.sampler = GlobalBatchSampler(len(ds), t.batch_size, t.seed, get_rank(), get_world_size())
        if self.steps_per_epoch == 0:
            raise KmimError(
                f"train.batch_size={t.batch_size} x accum_steps={t.accum_steps} x {get_world_size()} processes "
                f"exceeds the {len(ds)} training images: lower train.batch_size"
            )
        self.enc_kwargs = encoder_kwargs(spec, cfg.data.img_size, self.info.channels)
        self.tok = self._check_tokenizer(tokenizer, spec.patch_size)
        out_dim = self.tok.k if self.tok is not None else spec.patch_size**2 * self.info.channels
        self.model = build_mim(spec, cfg.data.img_size, self.info.channels, out_dim).to(self.device)
        self.forward = wrap_for_training(self.model, self.device, t.compile)
        self.lr = effective_lr(t.base_lr, t.batch_size, t.accum_steps, get_world_size())
        self.opt = build_optimizer(
            self.model, self.lr, t.weight_decay, (t.beta1, t.beta2), fused=self.device.type == "cuda"
        )
        use_scaler = self.device.type == "cuda" and t.amp == "fp16"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.state = TrainState()
        self.loader = make_train_loader(self.views, self.sampler, cfg.data, self.device)
        if resume_from is not None:
            self._restore(resume_from)

    def _check_tokenizer(self, tok: Tokenizer | None, patch_size: int) -> Tokenizer | None:
        if self.cfg.train.target != "tokens":
            return None
        if tok is None:
            raise KmimError("train.target=tokens needs a tokenizer: set tokenizer.path or let kmim fit one")
        where = str(self.cfg.tokenizer.path or "tokenizer")
        tok.check_compatible(patch_size, self.info.channels, self.info.mean, self.info.std, where=where)
        return tok.to(self.device)

    def _restore(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.state = TrainState(**ckpt["train_state"])
        torch.set_rng_state(ckpt["rng"])
        if ckpt.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])

    @property
    def steps_per_epoch(self) -> int:
        return len(self.sampler) // self.cfg.train.accum_steps

    @property
    def encoder_spec(self) -> dict[str, Any]:
        return {"timm_name": resolve_spec(self.cfg.model).timm_name, "timm_kwargs": self.enc_kwargs}

    def run(self) -> dict[str, Any]:
        while self.state.epoch < self.cfg.train.epochs:
            self._epoch(self.state.epoch)
            self.state.epoch += 1
            self._save()
        return self._finish()

    def _epoch(self, epoch: int) -> None:
        t, st = self.cfg.train, self.state
        spe = self.steps_per_epoch
        schedule = Schedule(self.lr, t.epochs * spe, t.warmup_epochs * spe, t.min_lr)
        self.sampler.set_epoch(epoch)
        self.model.train()
        t0 = time.perf_counter()
        images0 = st.images

        def on_step(step: int, extras: dict[str, Any]) -> None:
            if step % t.log_every == 0:
                self._log({"step": step, "epoch": epoch, "loss": extras["loss"], "lr": self.opt.param_groups[0]["lr"]})

        def postfix(loss: float, _extras: dict[str, Any]) -> dict[str, str]:
            return {"loss": f"{loss:.4f}", "img_s": f"{(st.images - images0) / (time.perf_counter() - t0):.0f}"}

        try:
            res = run_epoch(
                self.loader, self._micro_step, self.opt, schedule, st.step, spe * t.accum_steps, t.accum_steps,
                self.scaler, on_step, f"epoch {epoch + 1}/{t.epochs}", self.progress and is_main(), postfix,
                reduce=mean_over_processes,
            )  # fmt: skip
        except NonFiniteLoss as e:
            raise KmimError(
                f"{e} (epoch {epoch}): {self._last_good()}; lower train.base_lr or use train.amp=off"
            ) from None
        st.step = res.step
        dt = time.perf_counter() - t0
        st.wall_s += dt
        mean_loss = sum(res.losses) / len(res.losses)  # already means over processes
        row = {"epoch": epoch, "epoch_loss": mean_loss, "epoch_s": dt, "img_per_s": (st.images - images0) / dt}
        self._log(row)
        if self.progress and is_main():
            tqdm.write(f"epoch {epoch + 1}/{t.epochs}  loss {mean_loss:.4f}  {row['img_per_s']:.0f} img/s")

    def _last_good(self) -> str:
        last = self.run_dir / "checkpoints" / "last.pt"
        if last.is_file():
            return f"the last good checkpoint {last} (after epoch {self.state.epoch}) is kept untouched"
        return "no checkpoint was written yet"

    def _micro_step(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict[str, Any]]:
        t = self.cfg.train
        imgs, labels, noise = (x.to(self.device, non_blocking=True) for x in batch)  # (B, C, H, W), (B,), (B, L)
        targets = compute_targets(imgs, t.target, self.model.patch_size, self.tok, t.norm_pix, labels)  # no grad
        with autocast_ctx(t.amp, self.device):
            pred, mask = self.forward(imgs, t.mask_ratio, noise)
            loss = mim_loss(pred, targets, mask, t.target, t.label_smoothing)
        self.state.images += imgs.shape[0] * get_world_size()
        return loss, {}

    def _log(self, row: dict[str, Any]) -> None:
        if is_main():
            append_jsonl(self.run_dir / "metrics.jsonl", row)

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything needed to resume the run or rebuild its encoder (config, tokenizer, RNG state included)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "config": config_to_dict(self.cfg),
            "train_state": vars(self.state).copy(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "encoder": self.encoder_spec,
            "tokenizer": None if self.tok is None else to_blob(self.tok),
        }

    def _save(self) -> None:
        if not is_main():
            return
        state = self.checkpoint_state()
        ckpt_dir = self.run_dir / "checkpoints"
        e = self.state.epoch
        if e % self.cfg.train.save_every == 0 or e == self.cfg.train.epochs:  # first: a kill leaves last.pt behind,
            save_checkpoint(ckpt_dir / f"checkpoint-{e:04d}.pt", state)  # so the resume redoes this epoch and file
        save_checkpoint(ckpt_dir / "last.pt", state)

    def _finish(self) -> dict[str, Any]:
        st = self.state
        if is_main():
            enc_state = self.model.encoder.state_dict()
            save_checkpoint(self.run_dir / "encoder.pt", {"encoder": self.encoder_spec, "state_dict": enc_state})
        last = _last_epoch_loss(self.run_dir / "metrics.jsonl")
        results = {
            "target": self.cfg.train.target,
            "epochs": st.epoch,
            "steps": st.step,
            "images_seen": st.images,
            "final_epoch_loss": last,
            "train_wall_s": round(st.wall_s, 2),
            "img_per_s": round(st.images / max(st.wall_s, 1e-9), 1),
            "encoder": self.encoder_spec,
        }
        if is_main():
            write_json(self.run_dir / "results.json", results)
        return results


def _last_epoch_loss(path: Path) -> float | None:
    rows = read_jsonl(path) if path.is_file() else []
    vals = [r["epoch_loss"] for r in rows if "epoch_loss" in r]
    return vals[-1] if vals else None


def _drop_metrics_after(path: Path, epoch: int) -> None:
    """Forget metrics rows of epochs >= `epoch` (work lost after the checkpoint, about to be redone); a torn last
    line (a kill mid-append) is dropped with a warning by read_jsonl."""
    if path.is_file():
        rows = [r for r in read_jsonl(path) if r.get("epoch", 0) < epoch]
        write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


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


def start_run(trainer: Pretrainer, overwrite: bool = False) -> None:
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
    if trainer.tok is not None:
        trainer.tok.save(run_dir / "tokenizer.pt")


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


def check_resume(saved: dict[str, Any], cfg: RunConfig, done_epochs: int) -> None:
    """Refuse overrides that a checkpoint cannot continue under (one line naming the field)."""
    saved, new = config_to_dict(load_config(None, (), base=saved)), config_to_dict(cfg)  # same defaults and layout
    for path in FROZEN_ON_RESUME:
        old_v, new_v = _at(saved, path), _at(new, path)
        if old_v != new_v:
            raise KmimError(f"--resume cannot change {path} (checkpoint: {old_v}, now: {new_v}): start a new run "
                            "with another name= instead")  # fmt: skip
    if cfg.train.epochs < done_epochs:
        raise KmimError(f"train.epochs={cfg.train.epochs} is below the {done_epochs} epochs the checkpoint already "
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
        _drop_metrics_after(run_dir / "metrics.jsonl", ckpt["train_state"]["epoch"])
    return run_dir, trainer.run()


__all__ = ["Pretrainer", "TrainState", "check_new_run_dir", "pretrain", "resume", "start_run"]
