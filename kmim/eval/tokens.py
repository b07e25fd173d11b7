"""A tokenizer scored on a labelled dataset: the token-class co-occurrence matrix its metrics are computed from."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

from kmim.data import make_loader
from kmim.dist import all_reduce_sum, get_rank, get_world_size
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
    of class l with token k); the images decoded by `num_workers` DataLoader workers (data.num_workers). Under a
    process group every process calls it: each encodes every world-th image and the counts are summed."""
    tok = tok.to(device).eval()
    counts = np.zeros((tok.k, num_classes), dtype=np.int64)
    rank, world = get_rank(), get_world_size()
    part = ds if world == 1 else Subset(ds, list(range(rank, len(ds), world)))
    loader = make_loader(part, batch_size, shuffle=False, num_workers=num_workers)
    for imgs, labels in progress_bar(loader, desc="encoding", disable=not progress):
        y = labels.to(device)
        t = tok.encode(imgs.to(device), y if tok.needs_labels else None)  # (B, P)
        counts += cooccurrence(t.cpu().numpy(), labels.numpy(), tok.k, num_classes=num_classes)
    if world > 1:
        counts = all_reduce_sum(torch.from_numpy(counts)).numpy()
    return counts
