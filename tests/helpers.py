"""Shortcuts for tests: the command layer's way of starting and resuming a run, without the CLI."""

from __future__ import annotations

from pathlib import Path

from kmim.commands.pretrain import continue_run
from kmim.config import RunConfig
from kmim.engine.plan import resolve_plan
from kmim.engine.pretrain import pretrain
from kmim.fit import prepare_tokenizer


def pretrain_run(cfg: RunConfig, progress: bool = False) -> tuple[Path, dict]:
    """Load or fit the tokenizer, then pretrain (what `kmim pretrain` does after checking its inputs)."""
    return pretrain(resolve_plan(cfg, "train"), prepare_tokenizer(cfg, progress), progress)


def resume_run(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = (), progress: bool = False):
    return continue_run(str(run_dir), list(overrides), progress)
