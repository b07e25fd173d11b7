"""What each CLI command does, as plain functions (kmim.cli only parses arguments and dispatches here)."""

from __future__ import annotations

import json
from typing import Any

from kmim.config import RunConfig, load_config
from kmim.data import build_dataset
from kmim.engine.dist import resolve_device
from kmim.engine.pretrain import pretrain, resume
from kmim.errors import KmimError
from kmim.eval import evaluate_encoder, load_encoder
from kmim.models import resolve_spec
from kmim.tokenizers import fit_tokenizer


def tokenize(cfg: RunConfig, out: str, progress: bool = True) -> dict[str, Any]:
    """Fit cfg.tokenizer on the training split of cfg.data and save it to `out`."""
    patch = resolve_spec(cfg.model).patch_size
    ds, info = build_dataset(cfg.data, "train", min_side=patch)
    tok = fit_tokenizer(cfg.tokenizer, ds, info, patch, cfg.data.name, progress)
    tok.save(out)
    return tok.describe()


def run_pretrain(cfg: RunConfig | None, resume_dir: str | None, overrides: list[str], progress: bool = True):
    if resume_dir is not None:
        return resume(resume_dir, overrides, progress)
    assert cfg is not None
    return pretrain(cfg, progress)


def run_eval(path: str, config: str | None, overrides: list[str], methods: tuple[str, ...], progress: bool = True):
    """kNN and/or linear probe of the encoder at `path` under the run's saved config (plus `config` and overrides)."""
    encoder, info = load_encoder(path)
    if info["config"] is None and config is None:
        raise KmimError(f"{path} carries no run config: pass --config with the dataset it should be evaluated on")
    cfg = load_config(config, overrides, base=info["config"])
    device = str(resolve_device(cfg.train.device))
    res = evaluate_encoder(encoder, cfg, methods, device, progress)
    res["checkpoint"] = info["checkpoint"]
    return res


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


__all__ = ["print_json", "run_eval", "run_pretrain", "tokenize"]
