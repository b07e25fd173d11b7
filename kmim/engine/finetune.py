"""End-to-end fine-tuning of a pretrained encoder (MAE's `main_finetune.py` recipe, built from timm's parts):
layer-wise lr decay (`param_groups_layer_decay`), drop path, RandAugment + random erasing (`create_transform`),
Mixup/CutMix (`Mixup`) with `SoftTargetCrossEntropy`, label smoothing, warmup + cosine per step, optional EMA
(`ModelEmaV3`). The encoder's weights come in ready (the command layer loads them); the classifier is the encoder's
timm architecture with a head for the dataset's classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import param_groups_layer_decay
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import Dataset, Subset

from kmim.data import build_dataset, make_loader
from kmim.data.loader import make_train_loader
from kmim.data.sampling import GlobalBatchSampler, SeededViews, sample_seed
from kmim.data.transforms import finetune_transform
from kmim.dist import gather_in_order, get_rank, get_world_size, is_main, wrap_for_training
from kmim.engine.checkpoint import save_checkpoint
from kmim.engine.optim import build_optimizer, effective_lr
from kmim.engine.plan import RunPlan
from kmim.engine.trainer import Trainer, autocast_ctx, write_results
from kmim.errors import KmimError
from kmim.models import EncoderSpec, build_classifier

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

HEAD_KEYS = ("head.", "fc_norm.")  # what a pretrained encoder does not have


def load_encoder_weights(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Encoder weights into the classifier: only the head (and fc_norm for avg pooling) may be missing; a
    checkpoint of another architecture is refused in one line."""
    try:
        res = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise KmimError(f"{where} does not fit the classifier: {str(e).strip().splitlines()[1].strip()}") from None
    missing = [k for k in res.missing_keys if not k.startswith(HEAD_KEYS)]
    if missing:
        raise KmimError(
            f"{where} is not an encoder of this architecture: {len(missing)} weights missing "
            f"(e.g. {', '.join(missing[:3])})"
        )


@torch.no_grad()
def classify_top1(
    model: nn.Module, ds: Dataset[Any], batch_size: int, *, device: torch.device, amp: str, num_workers: int = 0
) -> float:
    """Top-1 (%) of `model` on `ds`; under torchrun each process classifies every world_size-th image."""
    model.eval()
    rank, world = get_rank(), get_world_size()
    indices = torch.arange(rank, len(cast(Sized, ds)), world)
    part = ds if world == 1 else Subset(ds, indices.tolist())
    hits = []
    for imgs, y in make_loader(part, batch_size, shuffle=False, num_workers=num_workers):
        with autocast_ctx(amp, device):
            logits = model(imgs.to(device, non_blocking=True))
        hits.append((logits.argmax(dim=1).cpu() == y).float())
    correct = gather_in_order(torch.cat(hits), indices, len(cast(Sized, ds)))
    return 100.0 * correct.mean().item()


def holdout_split(
    train: Dataset[Any], train_eval: Dataset[Any], fraction: float, *, seed: int
) -> tuple[Dataset[Any], Dataset[Any]]:
    """(the augmented train split without a stratified `fraction`, that fraction in the eval view): a validation
    split taken from train, seeded by `seed`, for choices that must not look at the test split."""
    from sklearn.model_selection import train_test_split

    targets = getattr(train, "targets", None)  # ImageFolder, CIFAR; in-memory datasets keep `labels`
    labels = np.asarray(targets if targets is not None else train.labels)  # type: ignore[attr-defined]
    idx = np.arange(len(labels))
    least = int(np.bincount(labels).min()) if len(labels) else 0
    if least < 2:
        raise KmimError(
            f"finetune.holdout={fraction}: a class has {least} training image(s), and a stratified held-out part "
            "needs at least 2 per class (one to fit, one to hold out): add images, or finetune.holdout=0"
        )
    try:
        fit, held = train_test_split(idx, test_size=fraction, stratify=labels, random_state=seed)
    except ValueError as e:
        reason = str(e).splitlines()[0]
        raise KmimError(
            f"finetune.holdout={fraction}: the training split cannot give a stratified held-out part "
            f"({reason}): use a larger fraction or finetune.holdout=0"
        ) from None
    return Subset(train, sorted(fit.tolist())), Subset(train_eval, sorted(held.tolist()))


@dataclass(frozen=True)
class FinetuneSource:
    """The pretrained encoder a fine-tuning run starts from: its architecture, its weights (None on a resume: the
    checkpoint's are loaded) and where it came from (a checkpoint path, or "random-init (seed s)")."""

    spec: EncoderSpec
    state_dict: dict[str, torch.Tensor] | None
    path: str


class Finetuner(Trainer):
    """Owns the classifier, optimizer (layer decay), data, Mixup, EMA and run directory of one fine-tuning run."""

    kind = "finetune"

    def __init__(
        self,
        plan: RunPlan,
        run_dir: Path,
        source: FinetuneSource,
        *,
        progress: bool = True,
        resume_from: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(plan, run_dir, progress=progress)
        cfg, ft = plan.cfg, plan.cfg.finetune
        ds, info = build_dataset(cfg.data, "train")
        cast(Any, ds).transform = finetune_transform(cfg.data, ft, info.mean, std=info.std, native=info.native_size)
        self.test, _ = build_dataset(cfg.data, "test")
        self.eval_split = f"{cfg.data.name} test split"
        if ft.holdout > 0:
            ds, self.test = holdout_split(ds, build_dataset(cfg.data, "train")[0], ft.holdout, seed=ft.seed)
            self.eval_split = f"a held-out {ft.holdout:.0%} of {cfg.data.name}'s train split (finetune.holdout)"
        self.num_classes, self.source_path = len(info.classes), source.path
        self._check_source(source, info.channels)
        self.views = SeededViews(ds, ft.seed, 0)
        self.sampler = GlobalBatchSampler(
            len(cast(Sized, ds)), self.batch.micro, ft.seed, rank=get_rank(), world_size=get_world_size()
        )
        enc = source.spec
        self.spec = EncoderSpec(
            enc.timm_name, {**enc.timm_kwargs, "num_classes": self.num_classes, "global_pool": ft.pool}
        )
        self.model = build_classifier(enc, self.num_classes, pool=ft.pool, drop_path=ft.drop_path)
        if source.state_dict is not None:  # None on a resume: the checkpoint's weights are loaded below
            load_encoder_weights(self.model, source.state_dict, source.path)
        self.model.to(self.device)
        self.forward = wrap_for_training(self.model, self.device, cfg.run.compile)
        self.lr = effective_lr(ft.base_lr, self.batch.global_batch)
        groups = param_groups_layer_decay(
            self.model,
            ft.weight_decay,
            cast("VisionTransformer", self.model).no_weight_decay(),
            layer_decay=ft.layer_decay,
        )
        cuda = self.device.type == "cuda"
        self.opt = build_optimizer(self.model, self.lr, groups=groups, fused=cuda)
        self.scaler = torch.amp.GradScaler("cuda") if cuda and ft.amp == "fp16" else None
        self.mixup = self._mixup()
        self.criterion = self._criterion()
        self.ema = ModelEmaV3(self.model, decay=ft.ema_decay) if ft.ema else None
        self.loader = make_train_loader(self.views, self.sampler, cfg.data, device=self.device)
        self.top1: dict[str, float] = {}
        self.best: dict[str, float] = {}  # best test top-1 over the evaluated epochs (MAE reports it) and its epoch
        self._ready(resume_from)

    def _check_source(self, source: FinetuneSource, channels: int) -> None:
        kw = source.spec.timm_kwargs
        if kw.get("img_size") != self.cfg.data.img_size:
            raise KmimError(
                f"data.img_size={self.cfg.data.img_size} but {source.path} was pretrained at "
                f"{kw.get('img_size')} px: set data.img_size={kw.get('img_size')}"
            )
        if kw.get("in_chans", 3) != channels:
            raise KmimError(
                f"{source.path} takes {kw.get('in_chans')}-channel images, data.name="
                f"{self.cfg.data.name} has {channels}"
            )

    def _mixup(self) -> Mixup | None:
        ft = self.cfg.finetune
        if ft.mixup <= 0 and ft.cutmix <= 0:
            return None
        if self.batch.micro % 2:
            raise KmimError(
                f"finetune: Mixup/CutMix pairs images, so the {self.batch.micro} images per process and "
                f"micro-step ({self.batch.describe()}) must be even: change finetune.batch_size or "
                "finetune.micro_batch_size"
            )
        return cast("Callable[..., Mixup]", Mixup)(  # timm's Mixup is unannotated
            mixup_alpha=ft.mixup,
            cutmix_alpha=ft.cutmix,
            prob=ft.mixup_prob,
            label_smoothing=ft.smoothing,
            num_classes=self.num_classes,
        )

    def _criterion(self) -> nn.Module:
        if self.mixup is not None:
            return cast("Callable[[], nn.Module]", SoftTargetCrossEntropy)()  # Mixup already smooths the soft targets
        if self.cfg.finetune.smoothing > 0:
            return cast("Callable[[float], nn.Module]", LabelSmoothingCrossEntropy)(self.cfg.finetune.smoothing)
        return nn.CrossEntropyLoss()

    def _micro_step(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict[str, Any]]:
        ft = self.cfg.finetune
        imgs, labels = batch[0].to(self.device, non_blocking=True), batch[1].to(self.device, non_blocking=True)
        if self.mixup is not None:  # Mixup draws from numpy: seeded per micro-batch, so a resume redraws the same
            np.random.seed(sample_seed(ft.seed + 1, get_rank(), self.state.images) % 2**32)
            imgs, labels = self.mixup(imgs, labels)
        if ft.drop_path > 0 and get_world_size() > 1:  # drop path draws from torch's RNG, seeded alike on every
            torch.manual_seed(sample_seed(ft.seed + 2, get_rank(), self.state.images))  # rank: give each its own
        with autocast_ctx(ft.amp, self.device):
            loss = self.criterion(self.forward(imgs), labels)
        self.state.images += imgs.shape[0] * get_world_size()
        return loss, {}

    def _on_step(self, step: int) -> None:
        if self.ema is not None:
            self.ema.update(self.model, step=step)

    def _after_epoch(self, epochs_done: int) -> None:
        ft = self.cfg.finetune
        if epochs_done % ft.eval_every and epochs_done != ft.epochs:
            return
        bs, workers = self.cfg.eval.batch_size, self.cfg.data.num_workers
        self.top1 = {
            "test_top1": classify_top1(self.model, self.test, bs, device=self.device, amp=ft.amp, num_workers=workers)
        }
        if self.ema is not None:
            self.top1["test_top1_ema"] = classify_top1(
                self.ema.module, self.test, bs, device=self.device, amp=ft.amp, num_workers=workers
            )
        if self.top1["test_top1"] > self.best.get("top1", -1.0):
            self.best = {"top1": self.top1["test_top1"], "epoch": epochs_done}
        self._log({"epoch": epochs_done - 1, **self.top1})

    def _restore(self, ckpt: dict[str, Any]) -> None:
        if ckpt.get("num_classes") != self.num_classes:
            raise KmimError(
                f"the checkpoint's head has {ckpt.get('num_classes')} classes, data.name={self.cfg.data.name} has "
                f"{self.num_classes}: fine-tune on the data it was started on"
            )
        super()._restore(ckpt)
        self.best = dict(ckpt.get("best") or {})
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.load_state_dict(ckpt["ema"])

    def checkpoint_state(self) -> dict[str, Any]:
        ema = self.ema.state_dict() if self.ema is not None else None
        return {
            **super().checkpoint_state(),
            "classifier": self.spec.to_dict(),
            "num_classes": self.num_classes,
            "source": self.source_path,
            "ema": ema,
            "best": self.best,
        }

    def _finish(self) -> dict[str, Any]:
        if not self.top1:  # resumed after the last epoch's evaluation
            self._after_epoch(self.state.epoch)
        if is_main():
            model = self.ema.module if self.ema is not None else self.model
            save_checkpoint(
                self.run_dir / "model.pt", {"classifier": self.spec.to_dict(), "state_dict": model.state_dict()}
            )
        results = {
            "finetune_top1": round(self.top1["test_top1"], 2),
            "finetune_best_top1": round(self.best["top1"], 2),
            "finetune_best_epoch": self.best["epoch"],
            **({"finetune_ema_top1": round(self.top1["test_top1_ema"], 2)} if "test_top1_ema" in self.top1 else {}),
            "evaluated_on": f"{self.eval_split} ({len(cast(Sized, self.test))} images): finetune_top1 after the last "
            f"epoch, finetune_best_top1 the best of the epochs evaluated (every {self.cfg.finetune.eval_every}; MAE's "
            "number, chosen on the test split)",
            "source": self.source_path,
            **super()._finish(),
            "classifier": self.spec.to_dict(),
        }
        write_results(self.run_dir, results)
        return results
