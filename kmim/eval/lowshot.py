"""Low-shot linear probe: a few labelled images per class, several random draws (where the full probe saturates)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler


def low_shot_probe(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    *,
    test_labels: torch.Tensor,
    shots: int = 10,
    draws: int = 5,
    seed: int = 0,
) -> dict[str, float | list[float]]:
    """Test top-1 (%) of an L2 logistic regression (scikit-learn, C = 1) fitted on `shots` training images per class
    (drawn with a seeded generator, standardized with their own mean / std), for each of `draws` draws: mean, std
    (ddof 1) and the per-draw values."""
    rng = np.random.default_rng(seed)
    y = train_labels.numpy()
    xtr, xte, yte = train_feats.float().numpy(), test_feats.float().numpy(), test_labels.numpy()
    accs = []
    for _ in range(draws):
        pick = np.concatenate([rng.choice(np.flatnonzero(y == c), shots, replace=False) for c in np.unique(y)])
        scaler = StandardScaler().fit(xtr[pick])
        clf = LogisticRegression(C=1.0, max_iter=2000).fit(scaler.transform(xtr[pick]), y[pick])
        accs.append(100.0 * float((clf.predict(scaler.transform(xte)) == yte).mean()))
    std = float(np.std(accs, ddof=1)) if draws > 1 else 0.0
    return {"mean": float(np.mean(accs)), "std": std, "draws": accs}
