"""A content checksum for kmim's files (checkpoints, tokenizers): refuse a bit-flipped file instead of loading it."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch


def content_digest(obj: Any) -> str:
    """sha256 hex of a checkpoint's content: nested dicts, lists/tuples, tensors (dtype, shape, bytes) and scalars.

    It depends only on what torch.save preserves, so the same content gives the same digest before saving and after
    loading, on any device.
    """
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        _feed_tensor(h, obj)
    elif isinstance(obj, Mapping):
        h.update(f"dict{len(obj)}(".encode())
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"list{len(obj)}(".encode())
        for v in obj:
            _feed(h, v)
    elif isinstance(obj, (set, frozenset)):  # iteration order of a set is not stable across processes
        _feed(h, sorted(repr(v) for v in obj))
    else:
        text = f"{type(obj).__name__}:{obj!r}"
        h.update(f"scalar{len(text)}:{text}".encode())


def _feed_tensor(h: Any, t: torch.Tensor) -> None:
    t = t.detach()
    if t.layout != torch.strided:
        t = t.to_dense()
    h.update(f"tensor:{t.dtype}:{tuple(t.shape)}:".encode())
    flat = t.cpu().contiguous().reshape(-1)
    h.update(flat.view(torch.uint8).numpy())
