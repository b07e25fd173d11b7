"""Checkpoints: everything needed to resume a run or rebuild its encoder (config, tokenizer, RNG state)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kmim.errors import KmimError
from kmim.runinfo import atomic_write

CKPT_FORMAT = "kmim-checkpoint"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save({"format": CKPT_FORMAT, **state}, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise KmimError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise KmimError(
            f"checkpoint {path} cannot be read ({type(e).__name__}): the file is damaged or not kmim's"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise KmimError(f"{path} is not a kmim checkpoint (no '{CKPT_FORMAT}' header)")
    return ckpt


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (its checkpoints/last.pt)."""
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoints" / "last.pt"
        if not p.is_file():
            raise KmimError(f"run directory {path} has no checkpoints/last.pt: is it a finished `kmim pretrain` run?")
    return p
