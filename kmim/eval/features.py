"""Frozen-encoder features with every patch visible, and encoder loading from runs and checkpoints."""

from __future__ import annotations

from collections.abc import Sized
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from kmim.config import POOLS
from kmim.data import make_loader
from kmim.dist import gather_in_order, get_rank, get_world_size
from kmim.engine.checkpoint import load_checkpoint, resolve_checkpoint
from kmim.errors import KmimError
from kmim.progress import progress_bar
from kmim.spec import EncoderSpec
from kmim.tokenizers.base import read_tokenizer_file

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer


def pool_tokens(tokens: torch.Tensor, pool: str) -> torch.Tensor:
    """tokens (B, 1 + L, D) after the final norm -> (B, D): the CLS token, or the mean of the patch tokens."""
    return tokens[:, 0] if pool == "cls" else tokens[:, 1:].mean(dim=1)


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    ds: Dataset[Any],
    batch_size: int = 256,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
    num_workers: int = 0,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Features of every image of `ds` for each pool ({"cls": (N, D), "mean": (N, D)}) and labels (N,), in dataset
    order. Under torchrun each process extracts every world_size-th image and the rows are gathered back in order."""
    encoder.eval().to(device)
    rank, world = get_rank(), get_world_size()
    indices = torch.arange(rank, len(cast(Sized, ds)), world)  # (m,)
    part = ds if world == 1 else Subset(ds, indices.tolist())
    feats: dict[str, list[torch.Tensor]] = {p: [] for p in POOLS}
    labels = []
    loader = make_loader(part, batch_size, shuffle=False, num_workers=num_workers)
    bar = progress_bar(loader, desc="features", disable=not progress, leave=False)
    for imgs, y in bar:
        tokens = cast("VisionTransformer", encoder).forward_features(imgs.to(device)).float()  # (B, 1 + L, D)
        for p in POOLS:
            feats[p].append(pool_tokens(tokens, p))
        labels.append(y.to(tokens.device))
    out = {
        p: gather_in_order(torch.cat(v), indices.to(v[0].device), len(cast(Sized, ds))).cpu() for p, v in feats.items()
    }
    return out, gather_in_order(torch.cat(labels), indices.to(labels[0].device), len(cast(Sized, ds))).cpu()


NETWORKS = ("student", "teacher")


def load_encoder(path: str | Path, network: str = "student") -> tuple[nn.Module, dict[str, Any]]:
    """The timm encoder of a run directory, a training checkpoint or an encoder.pt, and the run's saved config.
    `network="teacher"`: the EMA teacher of an online-clusters run instead (what CAPI evaluates), from the
    checkpoint's online state, or for a finished run from its learned tokenizer (RUN/tokenizer.pt)."""
    p = resolve_checkpoint(path)
    ckpt = load_checkpoint(p)
    if "encoder" not in ckpt or "timm_name" not in ckpt.get("encoder", {}):
        raise KmimError(f"{p} does not describe an encoder (no timm architecture recorded)")
    spec = ckpt["encoder"]
    enc = EncoderSpec.from_dict(spec).create()
    if network == "teacher":
        state = _teacher_state(p, ckpt)
    elif "state_dict" in ckpt:  # encoder.pt
        state = ckpt["state_dict"]
    else:
        state = {k.removeprefix("encoder."): v for k, v in ckpt["model"].items() if k.startswith("encoder.")}
    try:
        res = enc.load_state_dict(state, strict=False)
        bad = [*res.missing_keys, *res.unexpected_keys]
    except RuntimeError as e:  # shapes differ
        bad = [str(e).strip().splitlines()[-1].strip()]
    if bad:
        raise KmimError(
            f"{p}: the weights do not match the recorded architecture {spec['timm_name']} "
            f"({len(bad)} keys differ, e.g. {', '.join(bad[:3])})"
        )
    config = ckpt.get("config")
    if config is None:
        run_cfg = p.parent / "checkpoints" / "last.pt"
        config = load_checkpoint(run_cfg)["config"] if run_cfg.is_file() else None
    done = (ckpt.get("train_state") or {}).get("epoch")  # None for an encoder.pt (a finished run)
    return enc, {"config": config, "checkpoint": str(p), "encoder": spec, "epochs_done": done, "network": network}


def _teacher_state(p: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    """The EMA teacher's weights: a training checkpoint's online state, or the run folder's tokenizer.pt."""
    online = ckpt.get("online")
    if online is None and "state_dict" in ckpt:  # encoder.pt: the finished run saved its tokenizer beside it
        tok = p.parent / "tokenizer.pt"
        online = read_tokenizer_file(tok) if tok.is_file() else None
    if online is None or online.get("kind") != "online-clusters":
        raise KmimError(f"{p} is not from an online-clusters run: only those have an EMA teacher (--network student)")
    return {k.removeprefix("teacher."): v for k, v in online["state"].items() if k.startswith("teacher.")}
