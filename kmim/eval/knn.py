"""Weighted k-nearest-neighbour classifier on frozen features (DINO's protocol)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kmim.dist import gather_in_order, get_rank, get_world_size


@torch.no_grad()
def weighted_knn_predict(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    *,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class scores of each test sample: score_c = sum_{j in top-k cosine neighbours} exp(s_j / T) * [y_j = c].

    train_feats (N, D), train_labels (N,), test_feats (M, D) -> predicted labels (M,), computed on train_feats'
    device (a CUDA bank: the similarities and votes on the GPU). Ties go to the lower class.
    """
    bank = F.normalize(train_feats.float(), dim=1)  # (N, D)
    bank_labels = train_labels.to(bank.device)  # (N,)
    k = min(k, bank.shape[0])
    preds = []
    for s in range(0, test_feats.shape[0], chunk):
        q = F.normalize(test_feats[s : s + chunk].to(bank.device).float(), dim=1)  # (m, D)
        sim, idx = (q @ bank.T).topk(k, dim=1)  # (m, k)
        votes = torch.zeros(q.shape[0], num_classes, device=bank.device)
        votes.scatter_add_(1, bank_labels[idx], (sim / temperature).exp())  # (m, C)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long, device=bank.device)


@torch.no_grad()
def knn_top1(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    *,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    device: str | torch.device = "cpu",
) -> float:
    """Top-1 (%) of `weighted_knn_predict` with bank train = (X (N, D), y (N,)) on `device`, over test = (X (M, D),
    y (M,)). Under torchrun each process classifies every world-th test row and the predictions are gathered in
    order, so the number equals one process's (at ImageNet scale: 50,000 queries against 1.28 M features, on the
    GPUs rather than once per rank on the CPU)."""
    rank, world = get_rank(), get_world_size()
    rows = torch.arange(rank, test[0].shape[0], world)  # (m,)
    bank = train[0].to(device)
    pred = weighted_knn_predict(bank, train[1], test[0][rows], num_classes=num_classes, k=k, temperature=temperature)
    pred = gather_in_order(pred, rows.to(pred.device), test[0].shape[0]).cpu()  # (M,)
    return top1(pred, test[1])


def top1(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent: 100 * mean(pred == labels)."""
    return 100.0 * (pred == labels).float().mean().item()
