"""Linear probe on cached features: learning rate chosen on a held-out part of train, then refit on all of train."""

from __future__ import annotations

from typing import Any

import torch
from sklearn.model_selection import train_test_split

from kmim.engine.probe import train_linear_probe
from kmim.errors import KmimError
from kmim.eval.knn import top1


@torch.no_grad()
def _accuracy(head: torch.nn.Module, feats: torch.Tensor, labels: torch.Tensor) -> float:
    return top1(head(feats).argmax(dim=1), labels)


def probe_recipe(e: Any, seed: int) -> dict[str, Any]:
    """The keyword arguments of `linear_probe` from an EvalConfig `e` (eval.probe_*) and a seed."""
    return {
        "epochs": e.linear.epochs,
        "batch_size": e.linear.batch_size,
        "weight_decay": e.linear.weight_decay,
        "seed": seed,
    }


def check_held_out_split(labels: torch.Tensor, num_classes: int) -> None:
    """The stratified 10 % hold-out needs two images of every class and a tenth of train of at least one per
    class; else one KmimError line saying what to do."""
    counts = torch.bincount(labels, minlength=num_classes)
    if int(counts.min()) < 2 or len(labels) // 10 < num_classes:
        raise KmimError(
            f"the training split ({len(labels)} images, as few as {int(counts.min())} in a class) is too small for "
            "the probe's held-out lr choice (a stratified 10 %): pass one learning rate, e.g. eval.linear.lrs=[0.1]"
        )


def linear_probe(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    *,
    test_labels: torch.Tensor,
    num_classes: int,
    lrs: list[float],
    epochs: int = 100,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Top-1 (%) on test of a head trained with the lr that scored best on a stratified 10% of train (with a
    single lr there is nothing to choose and no split)."""
    recipe: dict[str, Any] = {"epochs": epochs, "batch_size": batch_size, "weight_decay": weight_decay, "seed": seed}
    if len(lrs) == 1:
        head = train_linear_probe(train_feats, train_labels, num_classes, lr=lrs[0], **recipe)
        return {"top1": _accuracy(head, test_feats, test_labels), "lr": lrs[0], "val_top1": {}}
    check_held_out_split(train_labels, num_classes)
    idx = torch.arange(len(train_labels))
    fit_idx, val_idx = train_test_split(idx.numpy(), test_size=0.1, stratify=train_labels.numpy(), random_state=seed)
    fit_idx, val_idx = torch.from_numpy(fit_idx), torch.from_numpy(val_idx)
    val_acc = {}
    for lr in lrs:
        head = train_linear_probe(train_feats[fit_idx], train_labels[fit_idx], num_classes, lr=lr, **recipe)
        val_acc[lr] = _accuracy(head, train_feats[val_idx], train_labels[val_idx])
    best = max(lrs, key=lambda lr: (val_acc[lr], -lr))
    head = train_linear_probe(train_feats, train_labels, num_classes, lr=best, **recipe)
    return {
        "top1": _accuracy(head, test_feats, test_labels),
        "lr": best,
        "val_top1": {str(k): v for k, v in val_acc.items()},
    }
