"""A tokenizer scored on a labelled dataset: the token-class co-occurrence matrix its metrics are computed from."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kmim.data import make_loader
from kmim.metrics import cooccurrence
from kmim.progress import progress_bar


@torch.no_grad()
def token_counts(
    tok: Any,
    ds: Any,
    num_classes: int,
    *,
    device: Any,
    batch_size: int = 256,
    progress: bool = True,
    num_workers: int = 0,
) -> np.ndarray:
    """Co-occurrence matrix N (K, L) of the tokens of every patch of `ds` with its image's label (n_kl = patches
    of class l with token k); the images decoded by `num_workers` DataLoader workers (data.num_workers)."""
    tok = tok.to(device).eval()
    counts = np.zeros((tok.k, num_classes), dtype=np.int64)
    loader = make_loader(ds, batch_size, shuffle=False, num_workers=num_workers)
    for imgs, labels in progress_bar(loader, desc="encoding", disable=not progress):
        y = labels.to(device)
        t = tok.encode(imgs.to(device), y if tok.needs_labels else None)  # (B, P)
        counts += cooccurrence(t.cpu().numpy(), labels.numpy(), tok.k, num_classes=num_classes)
    return counts
