"""The pretraining loop shared by K-MIM (token targets), the MAE baseline (pixel targets) and online clustering
targets (CAPI-style).

The trainer receives a ready tokenizer (or None for pixel targets): loading or fitting one is the caller's job
(kmim.fit.prepare_tokenizer), so constructing a trainer never runs K-means or trains a model. The online target
(`kmim.tokenizers.online.OnlineClusters`) is the one built here: its teacher starts as a copy of the student this
trainer creates. Each step it encodes the full view with the teacher, assigns the patches to the prototypes by
Sinkhorn-Knopp over the batch of every process, and the loss is the student's soft cross-entropy on the masked
patches plus the prototypes' clustering loss (gradients reach the student and the prototypes only); after the
step the teacher moves by EMA. The prototypes are a param group of the same AdamW (their own lr, betas, decay).
"""

from __future__ import annotations

from collections.abc import Sized
from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.data import Subset

from kmim.config import RunConfig
from kmim.data import build_dataset, make_loader
from kmim.data.sampling import GlobalBatchSampler, SeededViews
from kmim.engine.checkpoint import save_checkpoint
from kmim.engine.dist import (
    all_reduce_max,
    all_reduce_mean,
    all_reduce_sum,
    get_rank,
    get_world_size,
    is_main,
    wrap_for_training,
)
from kmim.engine.loader import make_train_loader
from kmim.engine.objectives import compute_targets, mim_loss, select_patches
from kmim.engine.optim import build_optimizer, effective_lr, ema_momentum
from kmim.engine.trainer import (
    EpochHook,
    Trainer,
    autocast_ctx,
    reopen_run,
    start_run,
    write_results,
)
from kmim.errors import KmimError
from kmim.metrics import token_metrics
from kmim.models import EncoderSpec, MaskedImageModel, build_mim, encoder_kwargs, resolve_spec
from kmim.runs import RunDir, check_resume
from kmim.tokenizers import Tokenizer, to_blob
from kmim.tokenizers.base import base_meta
from kmim.tokenizers.online import OnlineClusters, assignment_entropy, soft_cross_entropy

ONLINE = "online-clusters"


class Pretrainer(Trainer):
    """Owns the model, optimizer, data and run directory of one pretraining run."""

    kind = "pretrain"
    model: MaskedImageModel

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: Path,
        tokenizer: Tokenizer | None,
        *,
        progress: bool = True,
        resume_from: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(cfg, run_dir, cfg.train, progress=progress)
        spec = resolve_spec(cfg.model)
        t = cfg.train
        ds, self.info = build_dataset(cfg.data, "train", train=True, min_side=spec.patch_size)
        self.views = SeededViews(ds, t.seed, (cfg.data.img_size // spec.patch_size) ** 2)
        self.sampler = GlobalBatchSampler(
            len(cast(Sized, ds)), self.plan.micro, t.seed, rank=get_rank(), world_size=get_world_size()
        )
        self.enc_kwargs = encoder_kwargs(spec, cfg.data.img_size, self.info.channels)
        self.tok = self._check_tokenizer(tokenizer, spec.patch_size)
        self.k = self.tok.k if self.tok is not None else cfg.tokenizer.k  # ids or prototypes of the targets
        out_dim = self.k if t.target != "pixels" else spec.patch_size**2 * self.info.channels
        self.model = build_mim(spec, cfg.data.img_size, self.info.channels, out_dim=out_dim).to(self.device)
        self.online = self._online_target(spec.patch_size) if t.target == ONLINE else None
        self.forward = wrap_for_training(self.model, self.device, t.compile)
        self.lr = effective_lr(t.base_lr, self.plan.global_batch)
        cuda = self.device.type == "cuda"
        self.opt = build_optimizer(self.model, self.lr, t.weight_decay, betas=(t.beta1, t.beta2), fused=cuda)
        if self.online is not None:  # CAPI's clustering AdamW: betas (0.9, 0.95), its own peak lr
            o, protos = t.online, list(self.online.prototypes.parameters())
            group = {"params": protos, "betas": (0.9, 0.95), "weight_decay": o.proto_weight_decay}
            self.opt.add_param_group({**group, "lr_scale": o.proto_lr / self.lr})
        self._health_cache: dict[str, float] | None = None
        self._health_subset: tuple[Subset[Any], int] | None = None  # the fixed labelled images and the class count
        self.scaler = torch.amp.GradScaler("cuda") if cuda and t.amp == "fp16" else None
        self.loader = make_train_loader(self.views, self.sampler, cfg.data, device=self.device)
        self._reset_health()
        self._ready(resume_from)

    def _reset_health(self) -> None:
        """Target health counters of the epoch, kept on the device (no host sync per step)."""
        k = self.k if self.cfg.train.target != "pixels" else 1
        self._target_counts = torch.zeros(k, dtype=torch.long, device=self.device)  # (K,) masked targets per id
        self._target_hits = torch.zeros((), dtype=torch.long, device=self.device)  # argmax == target
        self._online_sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # entropy, clustering, steps

    def _count_targets(self, ids: torch.Tensor) -> None:
        """Add the ids (B, M) to the per-id counts: index_add_, which (unlike bincount on CUDA, which reads the
        largest id back to the host) does not stop the host each micro-step."""
        flat = ids.flatten()  # (B * M,)
        self._target_counts.index_add_(0, flat, torch.ones_like(flat, dtype=self._target_counts.dtype))

    def _online_target(self, patch_size: int) -> OnlineClusters:
        """Teacher = a copy of the fresh student's encoder; prototypes N(0, 1) seeded by tokenizer.seed."""
        t, enc = self.cfg.train, self.model.encoder
        meta = base_meta(
            self.k,
            patch_size,
            self.info,
            dataset=self.cfg.data.name,
            feature_source="online-teacher",
            feature_dim=int(enc.embed_dim),
            encoder=self.encoder_spec.to_dict(),
            target_temp=t.online.target_temp,
            pred_temp=t.online.pred_temp,
            sinkhorn_iters=t.online.sinkhorn_iters,
        ).stamp({})
        with torch.random.fork_rng(devices=[]):  # building the teacher draws weights it then overwrites
            target = OnlineClusters.create(meta, self.cfg.tokenizer.seed)
        target.copy_from(enc)
        return target.to(self.device)

    def _check_tokenizer(self, tok: Tokenizer | None, patch_size: int) -> Tokenizer | None:
        if self.cfg.train.target != "tokens":
            return None
        if tok is None:
            raise KmimError("train.target=tokens needs a tokenizer: set tokenizer.path or let kmim fit one")
        where = str(self.cfg.tokenizer.path or "tokenizer")
        tok.check_compatible(patch_size, self.info.channels, self.info.mean, std=self.info.std, where=where)
        return tok.to(self.device)

    def write_inputs(self) -> None:
        if self.tok is not None:
            self.tok.save(self.run_dir / "tokenizer.pt")

    def _restore(self, ckpt: dict[str, Any]) -> None:
        super()._restore(ckpt)
        if self.online is not None:
            self.online.load_state_dict(ckpt["online"]["state"])

    @property
    def encoder_spec(self) -> EncoderSpec:
        return EncoderSpec(resolve_spec(self.cfg.model).timm_name, self.enc_kwargs)

    def _micro_step(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict[str, Any]]:
        t = self.cfg.train
        imgs, labels, noise = (x.to(self.device, non_blocking=True) for x in batch)  # (B, C, H, W), (B,), (B, L)
        if self.online is not None:
            return self._online_step(imgs, noise), {}
        targets = compute_targets(
            imgs, t.target, self.model.patch_size, tokenizer=self.tok, norm_pix=t.norm_pix, labels=labels
        )  # no grad
        with autocast_ctx(t.amp, self.device):
            pred, ids = self.forward(imgs, t.mask_ratio, noise, masked_only=True)  # (B, M, out), (B, M)
            targets = select_patches(targets, ids)  # (B, M) ids or (B, M, p*p*C) pixels
            mask = torch.ones(ids.shape, device=ids.device)  # every selected patch is a masked one
            loss = mim_loss(pred, targets, mask, target=t.target, label_smoothing=t.label_smoothing)
        if self.tok is not None:
            with torch.no_grad():
                self._count_targets(targets)
                self._target_hits += (pred.argmax(dim=-1) == targets).sum()
        self.state.images += imgs.shape[0] * get_world_size()
        return loss, {}

    def _online_step(self, imgs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        t, target = self.cfg.train, self.online
        assert target is not None
        with autocast_ctx(t.amp, self.device):
            logits = target.logits(target.features(imgs))  # (B, L, K), the teacher sees the full view
        q = target.assign(logits, all_reduce_sum, all_reduce_max)  # (B, L, K), rows sum to 1
        clustering = target.clustering_loss(logits, q)  # gradient reaches the prototypes only
        with autocast_ctx(t.amp, self.device):
            pred, ids = self.forward(imgs, t.mask_ratio, noise, masked_only=True)  # (B, M, K), (B, M)
        q_masked = select_patches(q, ids)  # (B, M, K)
        loss = soft_cross_entropy(pred, q_masked, t.online.student_temp) + clustering
        with torch.no_grad():
            hard = q_masked.argmax(dim=-1)  # (B, M)
            self._count_targets(hard)
            self._target_hits += (pred.argmax(dim=-1) == hard).sum()
            self._online_sums += torch.stack(
                [
                    assignment_entropy(q_masked).double(),
                    clustering.detach().double(),
                    torch.ones((), dtype=torch.float64, device=self.device),
                ]
            )
        self.state.images += imgs.shape[0] * get_world_size()
        return loss

    def _before_step(self) -> None:
        """The prototypes are outside the DDP module: average their gradients over the processes."""
        if self.online is not None and get_world_size() > 1:
            for p in self.online.prototypes.parameters():
                if p.grad is not None:
                    p.grad.copy_(all_reduce_mean(p.grad))

    def _on_step(self, step: int) -> None:
        """The teacher's EMA update after optimizer step `step` (1-based), with CAPI's momentum schedule."""
        if self.online is not None:
            t, spe = self.cfg.train, self.steps_per_epoch
            m = ema_momentum(step - 1, t.epochs * spe, t.warmup_epochs * spe, base=t.online.momentum)
            self.online.ema_update(self.model.encoder, m)

    def _epoch_metrics(self) -> dict[str, float]:
        """Target health, over the epoch's masked patches of every process: the fraction of the K ids (hard
        assignments of online targets) that were targets, their perplexity exp(H(p)) with p the id frequencies
        (K at uniform use, 1 at collapse), the model's top-1 (%) on the masked ids; for online targets also the mean
        entropy of the soft assignments and the clustering loss; with train.health_images, TCAS / NMI / usage of
        the targets' hard ids on a fixed labelled subset (`_token_health`)."""
        if self.cfg.train.target == "pixels":
            return {}
        counts = all_reduce_sum(self._target_counts).double()  # (K,)
        hits = float(all_reduce_sum(self._target_hits))
        sums = all_reduce_sum(self._online_sums)  # (3,)
        self._reset_health()
        total = float(counts.sum())
        p = counts[counts > 0] / max(total, 1.0)
        out = {
            "targets_used": float((counts > 0).double().mean()),
            "targets_perplexity": float(torch.exp(-(p * p.log()).sum())),
            "masked_top1": 100.0 * hits / max(total, 1.0),
        }
        if self.online is not None:
            n = max(float(sums[2]), 1.0)
            out.update(assignment_entropy=float(sums[0]) / n, clustering_loss=float(sums[1]) / n)
        if self.cfg.train.health_images > 0 and is_main():
            out.update(self._token_health())
        return out

    @torch.no_grad()
    def _token_health(self) -> dict[str, float]:
        """TCAS, NMI, usage and perplexity of the targets' hard ids over every patch of a fixed subset of
        train.health_images training images (seeded by train.seed, eval view), against the images' labels. An
        offline tokenizer never changes, so its values are computed once. Rank 0 only; no global RNG is drawn."""
        if self._health_cache is not None and self.online is None:
            return self._health_cache
        tok = self.online if self.online is not None else self.tok
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
                amp = self.cfg.train.amp if self.online is not None else "off"  # as each computes its training targets
                with autocast_ctx(amp, self.device):
                    ids = tok.encode(x, y.to(self.device) if tok.needs_labels else None)  # (B, L)
                tokens.append(ids.cpu())
                labels.append(y)
        m = token_metrics(torch.cat(tokens).numpy(), torch.cat(labels).numpy(), self.k, num_classes=num_classes)
        self._health_cache = {f"tok_{key}": float(m[key]) for key in ("tcas", "nmi", "usage", "perplexity")}
        return self._health_cache

    def checkpoint_state(self) -> dict[str, Any]:
        tok = None if self.tok is None else to_blob(self.tok)
        online = None if self.online is None else to_blob(self.online)
        return {
            **super().checkpoint_state(),
            "encoder": self.encoder_spec.to_dict(),
            "tokenizer": tok,
            "online": online,
        }

    def _finish(self) -> dict[str, Any]:
        if is_main():
            enc_state = self.model.encoder.state_dict()
            save_checkpoint(
                self.run_dir / "encoder.pt", {"encoder": self.encoder_spec.to_dict(), "state_dict": enc_state}
            )
            if self.online is not None:  # the learned online tokenizer: scored like any other (kmim tcas)
                self.online.save(self.run_dir / "tokenizer.pt")
        results = {"target": self.cfg.train.target, **super()._finish(), "encoder": self.encoder_spec.to_dict()}
        write_results(self.run_dir, results)
        return results


def pretrain(
    cfg: RunConfig,
    tokenizer: Tokenizer | None,
    progress: bool = True,
    *,
    overwrite: bool = False,
    on_epoch: EpochHook | None = None,
    scan: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Run a fresh pretraining; returns the run dir and its results. Bad inputs fail before anything is written.
    `on_epoch(row)`, if given, is called with each epoch's metrics row; `scan` is the clean image scan to record."""
    run_dir = Path(cfg.out_dir) / cfg.name
    RunDir(run_dir).check_new(cfg, overwrite)
    trainer = Pretrainer(cfg, run_dir, tokenizer, progress=progress)
    if on_epoch is not None:
        trainer.epoch_hooks.append(on_epoch)
    start_run(trainer, overwrite, scan)
    return run_dir, trainer.run()


def resume(
    run_dir: Path,
    cfg: RunConfig,
    ckpt: dict[str, Any],
    *,
    tokenizer: Tokenizer | None,
    progress: bool = True,
    on_epoch: EpochHook | None = None,
    scan: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Continue the run in run_dir from the checkpoint `ckpt` under `cfg` (its saved config plus overrides)."""
    check_resume(ckpt["config"], cfg, ckpt["train_state"]["epoch"])
    trainer = Pretrainer(cfg, run_dir, tokenizer, progress=progress, resume_from=ckpt)
    if on_epoch is not None:
        trainer.epoch_hooks.append(on_epoch)
    reopen_run(run_dir, cfg, ckpt["train_state"]["epoch"], scan=scan)
    return run_dir, trainer.run()


__all__ = ["Pretrainer", "pretrain", "resume"]
