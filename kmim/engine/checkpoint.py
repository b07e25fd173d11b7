"""Checkpoints: everything needed to resume a run or rebuild its encoder (config, tokenizer, RNG state).

A checkpoint is a plain `torch.save` of one flat dict: {"format": "kmim-checkpoint", **state, "sha256": digest}, so
`torch.load(path, weights_only=True)` still reads it without kmim. The digest is a sha256 over the content (every
key, value and tensor byte, in order; see `content_digest`), so a bit flip anywhere in the tensors or the values is
caught on load; torch's own zip container has no checksum it verifies. Files without "sha256" are the legacy format
and load unchecked.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from kmim.digest import content_digest
from kmim.errors import KmimError
from kmim.runinfo import atomic_write

CKPT_FORMAT = "kmim-checkpoint"
DIGEST_KEY = "sha256"
_NUMBERED = re.compile(r"checkpoint-(\d+)\.pt")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` atomically and durably, with the sha256 of its content that load_checkpoint verifies."""
    ckpt = {"format": CKPT_FORMAT, **state}
    ckpt.pop(DIGEST_KEY, None)
    ckpt[DIGEST_KEY] = content_digest(ckpt)
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The flat dict that save_checkpoint wrote (without its digest); KmimError if it is missing or damaged."""
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
    stored = ckpt.pop(DIGEST_KEY, None)
    if stored is None and not _stray_digest(ckpt):  # the legacy format: nothing to verify
        return ckpt
    if stored != content_digest(ckpt):
        raise KmimError(
            f"checkpoint {path} is damaged (checksum mismatch): use an intact copy, or another checkpoint of the run"
        )
    return ckpt


def _stray_digest(ckpt: dict[str, Any]) -> bool:
    """Whether a top-level value looks like a sha256 under another key: the digest's key name itself was hit."""
    return any(isinstance(v, str) and _HEX64.fullmatch(v) for k, v in ckpt.items() if k != "format")


def latest_checkpoint(run_dir: str | Path) -> tuple[dict[str, Any], Path, str | None]:
    """The checkpoint to resume `run_dir` from: (checkpoint, its path, a note or None).

    checkpoints/last.pt when it loads and its checksum verifies (note None); else the intact checkpoint-NNNN.pt with
    the highest NNNN, with a note saying why last.pt was passed over. KmimError when the run has no checkpoint at all
    (killed before its first one) or when every one is damaged.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise KmimError(f"run directory {run_dir} does not exist: pass the folder of a `kmim pretrain` run")
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.pt"
    numbered = _numbered_checkpoints(ckpt_dir)
    if not last.is_file() and not numbered:
        raise KmimError(
            f"{run_dir} has no checkpoint: the run was killed before its first checkpoint; rerun the same "
            "`kmim pretrain` command without --resume (it will start fresh)"
        )
    if last.is_file():
        try:
            return load_checkpoint(last), last, None
        except KmimError:
            pass
    why = "damaged" if last.is_file() else "missing"
    skipped = []
    for path in numbered:
        try:
            ckpt = load_checkpoint(path)
        except KmimError:
            skipped.append(path.name)
            continue
        also = f" ({', '.join(skipped)} damaged too)" if skipped else ""
        return ckpt, path, f"checkpoints/last.pt is {why}{also}: resuming from {path.name}"
    raise KmimError(
        f"{last} is {why} and no intact checkpoint-NNNN.pt is left in {ckpt_dir}: the run cannot be resumed; move "
        f"{run_dir} away and rerun the same `kmim pretrain` command without --resume"
    )


def _numbered_checkpoints(ckpt_dir: Path) -> list[Path]:
    """checkpoint-NNNN.pt files in `ckpt_dir`, newest (highest NNNN) first."""
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _NUMBERED.fullmatch(p.name)) and p.is_file()]
    return [p for _, p in sorted(found, key=lambda x: x[0], reverse=True)]


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (its checkpoints/last.pt)."""
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoints" / "last.pt"
        if not p.is_file():
            raise KmimError(f"run directory {path} has no checkpoints/last.pt: is it a finished `kmim pretrain` run?")
    return p
