"""What a masked patch is trained to predict: one object per kind of target, one registry (TARGETS).

A target knows its output size, its loss on a batch, its hooks around the optimizer step, its epoch statistics and
its state for checkpoints; the pretraining step (kmim.engine.pretrain) calls these and nothing else of it.

* `TokenTarget` (K-MIM): the ids a ready tokenizer gives each patch of the view; cross-entropy on the masked ones.
* `PixelTarget` (MAE): the masked patches' pixels, per-patch normalised when train.norm_pix; mean squared error.
* `OnlineTarget` (CAPI-style): an EMA teacher (a copy of the fresh student's encoder) encodes the full view, its
  patches are assigned to learned prototypes by Sinkhorn-Knopp over the batch of every process, and the loss is the
  student's soft cross-entropy on the masked patches plus the prototypes' clustering loss (gradients reach the student
  and the prototypes only); after each step the teacher moves by EMA with CAPI's momentum schedule. The prototypes are
  a param group of the run's AdamW (their own lr, betas and decay).

Adding a target: a subclass of `Target` and a line in TARGETS (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch

from kmim.config import RunConfig
from kmim.data import DatasetInfo
from kmim.dist import all_reduce_max, all_reduce_mean, all_reduce_sum, get_world_size, is_main
from kmim.engine.objectives import compute_targets, mim_loss, select_patches
from kmim.engine.optim import ema_momentum
from kmim.engine.trainer import autocast_ctx
from kmim.errors import KmimError
from kmim.models import EncoderSpec, MaskedImageModel
from kmim.tokenizers import Tokenizer, to_blob
from kmim.tokenizers.base import base_meta
from kmim.tokenizers.online import OnlineClusters, assignment_entropy, soft_cross_entropy

Forward = Callable[..., tuple[torch.Tensor, torch.Tensor]]  # (imgs, mask_ratio, noise, masked_only) -> (pred, ids)


class Health:
    """A target's per-epoch counters, on the device (no host sync per step): masked targets per id (K,), argmax
    hits, and for online targets the sums of (assignment entropy, clustering loss, steps), the teacher's own argmax
    ids before Sinkhorn-Knopp per id (K,) and how often the targets' argmax agrees with them."""

    def __init__(self, k: int, device: torch.device) -> None:
        self.k, self.device = k, device
        self.reset()

    def reset(self) -> None:
        self.counts = torch.zeros(self.k, dtype=torch.long, device=self.device)  # (K,)
        self.hits = torch.zeros((), dtype=torch.long, device=self.device)
        self.sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        self.raw = torch.zeros(self.k, dtype=torch.long, device=self.device)  # (K,) teacher argmax, before SK
        self.agree = torch.zeros((), dtype=torch.long, device=self.device)

    def count_raw(self, raw: torch.Tensor, targets: torch.Tensor) -> None:
        """The teacher's argmax ids (B, M) before Sinkhorn-Knopp, and their agreement with the targets' (B, M)."""
        flat = raw.flatten()
        self.raw.index_add_(0, flat, torch.ones_like(flat, dtype=self.raw.dtype))
        self.agree += (raw == targets).sum()

    def count(self, ids: torch.Tensor, pred: torch.Tensor) -> None:
        """Ids (B, M) as targets, and the predictions (B, M, K) whose argmax hits them. index_add_, which (unlike
        bincount on CUDA) does not stop the host each micro-step."""
        flat = ids.flatten()  # (B * M,)
        self.counts.index_add_(0, flat, torch.ones_like(flat, dtype=self.counts.dtype))
        self.hits += (pred.argmax(dim=-1) == ids).sum()

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.counts, self.hits, self.sums, self.raw, self.agree

    def gather(self) -> None:
        """Sum over processes onto rank 0 (zero elsewhere): what a mid-epoch checkpoint keeps."""
        for t in self.tensors():
            total = all_reduce_sum(t)
            t.copy_(total if is_main() else torch.zeros_like(total))

    def metrics(self, online: bool) -> dict[str, float]:
        """Over the epoch's masked patches of every process: the fraction of the K ids that were targets, their
        perplexity exp(H(p)) with p the id frequencies (K at uniform use, 1 at collapse), the model's top-1 (%) on
        them; for online targets also what can show a collapse that Sinkhorn's balancing hides: the mean entropy of
        the soft targets (log K at uniform), the clustering loss, the fraction of ids and the perplexity of the
        teacher's own argmax before Sinkhorn-Knopp, and the fraction of patches whose target argmax agrees with it.
        Resets."""
        counts = all_reduce_sum(self.counts).double()  # (K,)
        hits = float(all_reduce_sum(self.hits))
        sums = all_reduce_sum(self.sums)  # (3,)
        raw, agree = all_reduce_sum(self.raw).double(), float(all_reduce_sum(self.agree))
        self.reset()
        total = float(counts.sum())
        out = {
            "targets_used": float((counts > 0).double().mean()),
            "targets_perplexity": _perplexity(counts),
            "masked_top1": 100.0 * hits / max(total, 1.0),
        }
        if online:
            n = max(float(sums[2]), 1.0)
            out.update(assignment_entropy=float(sums[0]) / n, clustering_loss=float(sums[1]) / n)
            out.update(teacher_used=float((raw > 0).double().mean()), teacher_perplexity=_perplexity(raw))
            out.update(targets_agree_teacher=agree / max(total, 1.0))
        return out


def _perplexity(counts: torch.Tensor) -> float:
    """exp(H(p)) of the id frequencies p = counts / sum (K at uniform use, 1 when one id takes all)."""
    p = counts[counts > 0] / max(float(counts.sum()), 1.0)
    return float(torch.exp(-(p * p.log()).sum()))


class Target:
    """The interface; hooks default to doing nothing."""

    name: ClassVar[str]
    online: ClassVar[bool] = False  # its health adds the online measures (assignment entropy, teacher argmax)
    health: Health | None = None

    def __init__(self, cfg: RunConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device

    def loss(self, forward: Forward, imgs: torch.Tensor, *, labels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The loss of a normalized batch (B, C, H, W) with its labels (B,) and mask noise (B, L)."""
        raise NotImplementedError

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Parameters of the target's own that the run's optimizer also updates."""
        return []

    def before_step(self) -> None:
        """After a step's last backward, before the update."""

    def after_step(self, step: int, total_steps: int, warmup_steps: int) -> None:
        """After optimizer step `step` (1-based) of `total_steps`."""

    def epoch_metrics(self) -> dict[str, float]:
        return {} if self.health is None else self.health.metrics(online=self.online)

    def encoder(self) -> Tokenizer | OnlineClusters | None:
        """What gives the targets' hard ids (train.health_images scores them), if anything."""
        return None

    def checkpoint(self) -> dict[str, Any]:
        return {"tokenizer": None, "online": None}

    def restore(self, ckpt: dict[str, Any]) -> None:
        """The target's state from a checkpoint (`checkpoint()`'s keys)."""

    def write_inputs(self, run_dir: Path) -> None:
        """Files a fresh run directory gets (tokens: the tokenizer)."""

    def finish(self, run_dir: Path) -> None:
        """Files of a finished run (online: the learned tokenizer). Rank 0."""


class PixelTarget(Target):
    name = "pixels"

    def __init__(self, cfg: RunConfig, device: torch.device, *, patch_size: int) -> None:
        super().__init__(cfg, device)
        self.patch_size = patch_size

    def loss(self, forward: Forward, imgs: torch.Tensor, *, labels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        t = self.cfg.train
        targets = compute_targets(imgs, "pixels", self.patch_size, norm_pix=t.norm_pix)  # (B, L, p*p*C), no grad
        with autocast_ctx(t.amp, self.device):
            pred, ids = forward(imgs, t.mask_ratio, noise, masked_only=True)  # (B, M, p*p*C), (B, M)
            targets = select_patches(targets, ids)  # (B, M, p*p*C)
            mask = torch.ones(ids.shape, device=ids.device)  # every selected patch is a masked one
            return mim_loss(pred, targets, mask, target="pixels")


class TokenTarget(Target):
    name = "tokens"

    def __init__(self, cfg: RunConfig, device: torch.device, *, tokenizer: Tokenizer) -> None:
        super().__init__(cfg, device)
        self.tok = tokenizer.to(device)
        self.health = Health(tokenizer.k, device)

    def loss(self, forward: Forward, imgs: torch.Tensor, *, labels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        t = self.cfg.train
        ids_all = compute_targets(imgs, "tokens", self.tok.patch_size, tokenizer=self.tok, labels=labels)  # (B, L)
        with autocast_ctx(t.amp, self.device):
            pred, ids = forward(imgs, t.mask_ratio, noise, masked_only=True)  # (B, M, K), (B, M)
            targets = select_patches(ids_all, ids)  # (B, M)
            mask = torch.ones(ids.shape, device=ids.device)
            loss = mim_loss(pred, targets, mask, target="tokens", label_smoothing=t.label_smoothing)
        with torch.no_grad():
            assert self.health is not None
            self.health.count(targets, pred)
        return loss

    def encoder(self) -> Tokenizer:
        return self.tok

    def checkpoint(self) -> dict[str, Any]:
        return {"tokenizer": to_blob(self.tok), "online": None}

    def write_inputs(self, run_dir: Path) -> None:
        self.tok.save(run_dir / "tokenizer.pt")


class OnlineTarget(Target):
    name = "online-clusters"
    online = True

    def __init__(
        self, cfg: RunConfig, device: torch.device, *, model: MaskedImageModel, info: DatasetInfo, spec: EncoderSpec
    ) -> None:
        """Teacher = a copy of the fresh student's encoder; prototypes N(0, 1) seeded by tokenizer.seed."""
        super().__init__(cfg, device)
        t, enc = cfg.train, model.encoder
        meta = base_meta(
            cfg.tokenizer.k,
            model.patch_size,
            info,
            dataset=cfg.data.name,
            feature_source="online-teacher",
            feature_dim=int(enc.embed_dim),
            encoder=spec.to_dict(),
            target_temp=t.online.target_temp,
            pred_temp=t.online.pred_temp,
            sinkhorn_iters=t.online.sinkhorn_iters,
            positionwise_sk=t.online.positionwise_sk,
        ).stamp({})
        with torch.random.fork_rng(devices=[]):  # building the teacher draws weights it then overwrites
            target = OnlineClusters.create(meta, cfg.tokenizer.seed)
        target.copy_from(enc)
        self.clusters, self.student = target.to(device), model.encoder
        self.health = Health(cfg.tokenizer.k, device)

    def loss(self, forward: Forward, imgs: torch.Tensor, *, labels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        t, target = self.cfg.train, self.clusters
        with autocast_ctx(t.amp, self.device):
            logits = target.logits(target.features(imgs))  # (B, L, K), the teacher sees the full view
        q = target.assign(logits, all_reduce_sum, all_reduce_max)  # (B, L, K), rows sum to 1
        clustering = target.clustering_loss(logits, q)  # gradient reaches the prototypes only
        with autocast_ctx(t.amp, self.device):
            pred, ids = forward(imgs, t.mask_ratio, noise, masked_only=True)  # (B, M, K), (B, M)
        q_masked = select_patches(q, ids)  # (B, M, K)
        loss = soft_cross_entropy(pred, q_masked, t.online.student_temp) + clustering
        with torch.no_grad():
            assert self.health is not None
            hard = q_masked.argmax(dim=-1)  # (B, M) hard targets
            self.health.count(hard, pred)
            self.health.count_raw(select_patches(logits.detach().argmax(dim=-1), ids), hard)  # (B, M) before SK
            self.health.sums += torch.stack(
                [
                    assignment_entropy(q_masked).double(),
                    clustering.detach().double(),
                    torch.ones((), dtype=torch.float64, device=self.device),
                ]
            )
        return loss

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """CAPI's clustering AdamW: betas (0.9, 0.95), its own peak lr (train.online.proto_lr, absolute)."""
        o = self.cfg.train.online
        protos = list(self.clusters.prototypes.parameters())
        return [
            {"params": protos, "betas": (0.9, 0.95), "weight_decay": o.proto_weight_decay, "lr_scale": o.proto_lr / lr}
        ]

    def before_step(self) -> None:
        """The prototypes are outside the DDP module: average their gradients over the processes."""
        if get_world_size() > 1:
            for p in self.clusters.prototypes.parameters():
                if p.grad is not None:
                    p.grad.copy_(all_reduce_mean(p.grad))

    def after_step(self, step: int, total_steps: int, warmup_steps: int) -> None:
        """The teacher's EMA update after optimizer step `step` (1-based), with CAPI's momentum schedule."""
        o = self.cfg.train.online
        m = ema_momentum(step - 1, total_steps, warmup_steps, base=o.momentum, truncate=o.momentum_truncate)
        self.clusters.ema_update(self.student, m)

    def encoder(self) -> OnlineClusters:
        return self.clusters

    def checkpoint(self) -> dict[str, Any]:
        return {"tokenizer": None, "online": to_blob(self.clusters)}

    def restore(self, ckpt: dict[str, Any]) -> None:
        self.clusters.load_state_dict(ckpt["online"]["state"])

    def finish(self, run_dir: Path) -> None:
        self.clusters.save(run_dir / "tokenizer.pt")  # the learned online tokenizer: scored like any other


TARGETS: dict[str, type[Target]] = {c.name: c for c in (TokenTarget, PixelTarget, OnlineTarget)}


def out_dim(cfg: RunConfig, tokenizer: Tokenizer | None, *, patch_size: int, channels: int) -> int:
    """The decoder's output per masked patch: K ids (tokens), K prototypes (online) or p*p*C pixels."""
    if cfg.train.target == "pixels":
        return patch_size**2 * channels
    return tokenizer.k if tokenizer is not None else cfg.tokenizer.k


def build_target(
    cfg: RunConfig,
    tokenizer: Tokenizer | None,
    *,
    model: MaskedImageModel,
    info: DatasetInfo,
    spec: EncoderSpec,
    device: torch.device,
) -> Target:
    """The run's target (train.target); a token target needs a tokenizer that fits the model and data."""
    kind = cfg.train.target
    if kind == "tokens":
        if tokenizer is None:
            raise KmimError("train.target=tokens needs a tokenizer: set tokenizer.path or let kmim fit one")
        where = str(cfg.tokenizer.path or "tokenizer")
        tokenizer.check_compatible(model.patch_size, info.channels, info.mean, std=info.std, where=where)
        return TokenTarget(cfg, device, tokenizer=tokenizer)
    if kind == "pixels":
        return PixelTarget(cfg, device, patch_size=model.patch_size)
    return OnlineTarget(cfg, device, model=model, info=info, spec=spec)
