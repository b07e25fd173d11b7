"""The pretraining loop shared by K-MIM (token targets) and the MAE baseline (pixel targets)."""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from kmim.config import RunConfig, config_to_dict, config_to_yaml, load_config
from kmim.data import build_dataset, make_loader
from kmim.engine.checkpoint import load_checkpoint, save_checkpoint
from kmim.engine.dist import get_world_size, is_main, resolve_device
from kmim.engine.objectives import TARGETS, compute_targets, mim_loss
from kmim.engine.optim import build_optimizer, effective_lr, lr_at, set_lr
from kmim.errors import KmimError
from kmim.models import build_mim, encoder_kwargs, resolve_spec
from kmim.runinfo import append_jsonl, environment, write_json, write_text
from kmim.tokenizers import KINDS, Tokenizer, fit_tokenizer, load_tokenizer


def autocast_ctx(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on CUDA only; fp32 on CPU (bf16 autocast is ~13x slower on this CPU)."""
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise KmimError(f"train.amp={amp!r} is not valid: use auto, bf16, fp16 or off")
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


def _tokenizer_for(cfg: RunConfig, info: Any, patch_size: int, progress: bool) -> Tokenizer:
    """Load cfg.tokenizer.path, or fit a tokenizer on the training split (pretrain saves it in the run dir)."""
    if cfg.tokenizer.path:
        tok = load_tokenizer(cfg.tokenizer.path)
    else:
        ds, _ = build_dataset(cfg.data, "train", min_side=patch_size)
        tok = fit_tokenizer(cfg.tokenizer, ds, info, patch_size, cfg.data.name, progress)
    tok.check_compatible(patch_size, info.channels, info.mean, info.std, where=str(cfg.tokenizer.path or "tokenizer"))
    return tok


def _state(model, opt, scaler, cfg: RunConfig, st: TrainState, tok: Tokenizer | None, enc_kwargs: dict) -> dict:
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "config": config_to_dict(cfg),
        "train_state": vars(st).copy(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "encoder": {"timm_name": resolve_spec(cfg.model).timm_name, "timm_kwargs": enc_kwargs},
        "tokenizer": None if tok is None else {"kind": tok.kind, "meta": tok.meta, "state": tok.state_dict()},
    }


class Pretrainer:
    """Owns the model, optimizer, data and run directory of one pretraining run."""

    def __init__(self, cfg: RunConfig, run_dir: Path, progress: bool = True, resume_from: dict | None = None) -> None:
        if cfg.train.target not in TARGETS:
            raise KmimError(f"train.target={cfg.train.target!r} is not valid: use one of {', '.join(TARGETS)}")
        self.cfg, self.run_dir, self.progress = cfg, run_dir, progress
        self.device = resolve_device(cfg.train.device)
        seed_everything(cfg.train.seed)
        spec = resolve_spec(cfg.model)
        self.ds, self.info = build_dataset(cfg.data, "train", train=True, min_side=spec.patch_size)
        self.enc_kwargs = encoder_kwargs(spec, cfg.data.img_size, self.info.channels)
        self.tok: Tokenizer | None = None
        if cfg.train.target == "tokens":
            self.tok = self._resume_tokenizer(resume_from) or _tokenizer_for(cfg, self.info, spec.patch_size, progress)
            self.tok.to(self.device)
        out_dim = self.tok.k if self.tok is not None else spec.patch_size**2 * self.info.channels
        self.model = build_mim(spec, cfg.data.img_size, self.info.channels, out_dim).to(self.device)
        self.lr = effective_lr(cfg.train, get_world_size())
        self.opt = build_optimizer(self.model, cfg.train, self.lr)
        use_scaler = self.device.type == "cuda" and cfg.train.amp == "fp16"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.state = TrainState()
        if self.steps_per_epoch == 0:
            raise KmimError(
                f"train.batch_size={cfg.train.batch_size} x accum_steps={cfg.train.accum_steps} exceeds the "
                f"{len(self.ds)} training images: lower train.batch_size"
            )
        if resume_from is not None:
            self._restore(resume_from)

    def _resume_tokenizer(self, ckpt: dict | None) -> Tokenizer | None:
        if ckpt is None or ckpt.get("tokenizer") is None:
            return None
        t = ckpt["tokenizer"]
        return KINDS[t["kind"]].from_state(t["meta"], t["state"])

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
        return (len(self.ds) // self.cfg.train.batch_size) // self.cfg.train.accum_steps

    def run(self) -> dict[str, Any]:
        while self.state.epoch < self.cfg.train.epochs:
            self._epoch(self.state.epoch)
            self.state.epoch += 1
            self._save()
        return self._finish()

    def _epoch(self, epoch: int) -> None:
        t, st = self.cfg.train, self.state
        total, warmup = t.epochs * self.steps_per_epoch, t.warmup_epochs * self.steps_per_epoch
        loader = make_loader(
            self.ds, t.batch_size, shuffle=True, seed=t.seed + epoch, num_workers=self.cfg.data.num_workers
        )
        n_batches = self.steps_per_epoch * t.accum_steps
        self.model.train()
        bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{t.epochs}", disable=not self.progress, leave=False)
        t0, losses = time.perf_counter(), []
        for i, (imgs, labels) in enumerate(loader):
            if i >= n_batches:
                break
            if i % t.accum_steps == 0:
                set_lr(self.opt, lr_at(st.step, total, warmup, self.lr, t.min_lr))
            loss = self._micro_step(imgs.to(self.device, non_blocking=True), labels.to(self.device))
            losses.append(loss)
            st.images += imgs.shape[0]
            if (i + 1) % t.accum_steps == 0:
                self._optimizer_step()
                if st.step % t.log_every == 0 and is_main():
                    self._log({"step": st.step, "epoch": epoch, "loss": loss, "lr": self.opt.param_groups[0]["lr"]})
            rate = (i + 1) * t.batch_size / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.0f}")
            bar.update()
        bar.close()
        dt = time.perf_counter() - t0
        st.wall_s += dt
        mean_loss = sum(losses) / len(losses)
        if not math.isfinite(mean_loss):
            raise KmimError(f"loss became {mean_loss} in epoch {epoch}: lower train.base_lr or use train.amp=off")
        row = {"epoch": epoch, "epoch_loss": mean_loss, "epoch_s": dt, "img_per_s": len(losses) * t.batch_size / dt}
        self._log(row)
        if self.progress and is_main():
            tqdm.write(f"epoch {epoch + 1}/{t.epochs}  loss {mean_loss:.4f}  {row['img_per_s']:.0f} img/s")

    def _micro_step(self, imgs: torch.Tensor, labels: torch.Tensor) -> float:
        t = self.cfg.train
        targets = compute_targets(imgs, t.target, self.model.patch_size, self.tok, t.norm_pix, labels)  # no grad
        with autocast_ctx(t.amp, self.device):
            pred, mask = self.model(imgs, t.mask_ratio)
            loss = mim_loss(pred, targets, mask, t.target, t.label_smoothing)
        scaled = loss / t.accum_steps
        (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        return float(loss.detach())

    def _optimizer_step(self) -> None:
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.state.step += 1

    def _log(self, row: dict[str, Any]) -> None:
        if is_main():
            append_jsonl(self.run_dir / "metrics.jsonl", row)

    def _save(self) -> None:
        if not is_main():
            return
        state = _state(self.model, self.opt, self.scaler, self.cfg, self.state, self.tok, self.enc_kwargs)
        ckpt_dir = self.run_dir / "checkpoints"
        save_checkpoint(ckpt_dir / "last.pt", state)
        e = self.state.epoch
        if e % self.cfg.train.save_every == 0 or e == self.cfg.train.epochs:
            save_checkpoint(ckpt_dir / f"checkpoint-{e:04d}.pt", state)

    def _finish(self) -> dict[str, Any]:
        st = self.state
        enc = {"timm_name": resolve_spec(self.cfg.model).timm_name, "timm_kwargs": self.enc_kwargs}
        if is_main():
            enc_state = self.model.encoder.state_dict()
            save_checkpoint(self.run_dir / "encoder.pt", {"encoder": enc, "state_dict": enc_state})
        last = _last_epoch_loss(self.run_dir / "metrics.jsonl")
        results = {
            "target": self.cfg.train.target,
            "epochs": st.epoch,
            "steps": st.step,
            "images_seen": st.images,
            "final_epoch_loss": last,
            "train_wall_s": round(st.wall_s, 2),
            "img_per_s": round(st.images / max(st.wall_s, 1e-9), 1),
            "encoder": enc,
        }
        if is_main():
            write_json(self.run_dir / "results.json", results)
        return results


def _last_epoch_loss(path: Path) -> float | None:
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    vals = [r["epoch_loss"] for r in rows if "epoch_loss" in r]
    return vals[-1] if vals else None


def _drop_metrics_after(path: Path, epoch: int) -> None:
    """Forget metrics rows of epochs >= `epoch` (work lost after the checkpoint, about to be redone)."""
    if path.is_file():
        rows = [line for line in path.read_text().splitlines() if json.loads(line).get("epoch", 0) < epoch]
        write_text(path, "".join(f"{r}\n" for r in rows))


def _check_new_run_dir(run_dir: Path) -> None:
    if (run_dir / "checkpoints" / "last.pt").exists():
        raise KmimError(f"run directory {run_dir} already holds a run: pass --resume {run_dir} or choose another name=")


def start_run(trainer: Pretrainer) -> None:
    """Create the run directory and write config.yaml, env.json and the tokenizer (after all inputs checked out)."""
    run_dir = trainer.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    write_text(run_dir / "config.yaml", config_to_yaml(trainer.cfg))
    write_json(run_dir / "env.json", environment())
    if trainer.tok is not None:
        trainer.tok.save(run_dir / "tokenizer.pt")


def pretrain(cfg: RunConfig, progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """Run a fresh pretraining; returns the run dir and its results. Bad inputs fail before anything is written."""
    run_dir = Path(cfg.out_dir) / cfg.name
    _check_new_run_dir(run_dir)
    trainer = Pretrainer(cfg, run_dir, progress)
    start_run(trainer)
    return run_dir, trainer.run()


def resume(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = (), progress: bool = True):
    """Continue a run from checkpoints/last.pt; overrides (e.g. train.epochs=60) apply on top of its saved config."""
    run_dir = Path(run_dir)
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    cfg = load_config(None, overrides, base=ckpt["config"])
    trainer = Pretrainer(cfg, run_dir, progress, resume_from=ckpt)
    write_text(run_dir / "config.yaml", config_to_yaml(cfg))
    _drop_metrics_after(run_dir / "metrics.jsonl", ckpt["train_state"]["epoch"])
    return run_dir, trainer.run()


__all__ = ["Pretrainer", "TrainState", "pretrain", "resume", "start_run"]
