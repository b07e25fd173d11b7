"""Evaluation of a frozen encoder: weighted kNN and linear probe on the dataset's test split."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from kmim.config import POOLS, RunConfig
from kmim.data import build_dataset
from kmim.engine.trainer import seed_everything
from kmim.eval.attentive import RECIPE as ATTENTIVE_RECIPE
from kmim.eval.attentive import attentive_probe
from kmim.eval.features import extract_features, load_encoder, pool_tokens
from kmim.eval.knn import knn_top1
from kmim.eval.lars import RECIPE, lars_probe
from kmim.eval.probe import linear_probe, probe_recipe
from kmim.eval.resume import ProbeCheckpoint
from kmim.models import build_mim, resolve_spec

if TYPE_CHECKING:
    import torch

__all__ = [
    "POOLS",
    "evaluate_encoder",
    "extract_features",
    "load_encoder",
    "pool_tokens",
    "random_encoder",
    "split_features",
]


def random_encoder(cfg: RunConfig, seed: int) -> nn.Module:
    """An untrained encoder with exactly the initialisation pretraining starts from (the floor of the probes)."""
    channels = build_dataset(cfg.data, "test")[1].channels
    seed_everything(seed)
    return build_mim(resolve_spec(cfg.model), cfg.data.img_size, channels, out_dim=1).encoder


def split_features(
    encoder: nn.Module, cfg: RunConfig, device: str = "cpu", *, progress: bool = True
) -> tuple[tuple[dict[str, torch.Tensor], torch.Tensor], tuple[dict[str, torch.Tensor], torch.Tensor], int]:
    """Features and labels of the train and test splits (eval transform), for every pool."""
    train, info = build_dataset(cfg.data, "train")
    test, _ = build_dataset(cfg.data, "test")
    workers = cfg.data.num_workers
    tr = extract_features(encoder, train, cfg.eval.batch_size, device=device, progress=progress, num_workers=workers)
    te = extract_features(encoder, test, cfg.eval.batch_size, device=device, progress=progress, num_workers=workers)
    return tr, te, len(info.classes)


def evaluate_encoder(
    encoder: nn.Module,
    cfg: RunConfig,
    methods: tuple[str, ...] = ("knn", "probe"),
    *,
    device: str = "cpu",
    progress: bool = True,
    checkpoint: ProbeCheckpoint | None = None,
) -> dict[str, Any]:
    """Top-1 (%) on the test split for each method, for every pool; `pool` records cfg.eval.pool, the headline one.
    The kNN and the default probe read cached eval-view features; eval.probe=lars trains through the encoder on
    augmented crops (the headline pool only) and extracts no train features of its own; eval.probe=attentive
    trains attention-pooling heads on the patch tokens the same way (`attentive_top1`, no pool). Those two keep
    `checkpoint` when given (kmim.eval.resume)."""
    e = cfg.eval
    out: dict[str, Any] = {"pool": e.pool}
    lars = "probe" in methods and e.probe == "lars"
    attentive = "probe" in methods and e.probe == "attentive"
    if "knn" in methods or ("probe" in methods and e.probe == "adamw"):
        out.update(_cached_feature_methods(encoder, cfg, methods, device=device, progress=progress))
    if attentive:
        ap = attentive_probe(encoder, cfg, device, progress=progress, checkpoint=checkpoint)
        out.update(
            attentive_top1=ap["top1"],
            attentive_held_out_top1=ap["held_out_top1"],
            attentive_lr=ap["lr"],
            attentive_weight_decay=ap["weight_decay"],
            attentive_grid=ap["grid"],
            attentive_global_batch=ap["global_batch"],
            attentive_probe=ATTENTIVE_RECIPE,
        )
    if lars:
        lp = lars_probe(encoder, cfg, device, progress=progress, checkpoint=checkpoint)
        out.setdefault(e.pool, {}).update(
            linear_probe_top1=lp["top1"],
            linear_probe_best_top1=lp["best_top1"],
            linear_probe_best_epoch=lp["best_epoch"],
            linear_probe_lr=lp["lr"],
            linear_probe_global_batch=lp["global_batch"],
            linear_probe=RECIPE,
        )
    out.update(out.get(e.pool, {}))
    return out


def _cached_feature_methods(
    encoder: nn.Module, cfg: RunConfig, methods: tuple[str, ...], *, device: str, progress: bool
) -> dict[str, Any]:
    e = cfg.eval
    (trf, try_), (tef, tey), n_cls = split_features(encoder, cfg, device, progress=progress)
    out: dict[str, Any] = {"n_train": len(try_), "n_test": len(tey)}
    for pool in POOLS:
        res: dict[str, Any] = {}
        if "knn" in methods:
            res["knn_top1"] = knn_top1(
                (trf[pool], try_),
                (tef[pool], tey),
                num_classes=n_cls,
                k=e.knn.k,
                temperature=e.knn.temperature,
                device=device,
            )
        if "probe" in methods and e.probe == "adamw":
            lp = linear_probe(
                trf[pool],
                try_,
                tef[pool],
                test_labels=tey,
                num_classes=n_cls,
                lrs=list(e.linear.lrs),
                **probe_recipe(e, cfg.train.seed),
            )
            res["linear_probe_top1"], res["linear_probe_lr"] = lp["top1"], lp["lr"]
            res["linear_probe"] = "adamw (head on cached eval-view features, lr picked on a held-out 10% of train)"
        out[pool] = res
    return out
