"""Weighted k-nearest-neighbour classifier on frozen features (DINO's protocol)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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

    train_feats (N, D), train_labels (N,), test_feats (M, D) -> predicted labels (M,). Ties go to the lower class.
    """
    bank = F.normalize(train_feats.float(), dim=1)  # (N, D)
    k = min(k, bank.shape[0])
    preds = []
    for s in range(0, test_feats.shape[0], chunk):
        q = F.normalize(test_feats[s : s + chunk].float(), dim=1)  # (m, D)
        sim, idx = (q @ bank.T).topk(k, dim=1)  # (m, k)
        votes = torch.zeros(q.shape[0], num_classes)
        votes.scatter_add_(1, train_labels[idx], (sim / temperature).exp())  # (m, C)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


def top1(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent: 100 * mean(pred == labels)."""
    return 100.0 * (pred == labels).float().mean().item()
