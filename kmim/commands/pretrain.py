"""`kmim pretrain`: MIM pretraining (K-MIM tokens or MAE pixels) into a run directory, or `--resume` one.

Under torchrun every process runs this command: inputs are checked on all of them (a problem on any stops all,
with one line), the tokenizer is fitted once on rank 0 (or read from tokenizer.path by every rank) and sent to the
others, and only rank 0 writes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kmim.argtypes import add_config_arguments, print_json
from kmim.dist import agree, in_process_group
from kmim.errors import KmimError
from kmim.launch import continue_pretraining, start_pretraining
from kmim.resolve import load_run_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last checkpoint, under its saved config plus the dotted "
        "overrides (e.g. train.epochs=80); -c is refused with --resume",
    )
    p.add_argument("--overwrite", action="store_true", help="replace what the run directory holds (fresh runs only)")


def start(
    config: str | None, overrides: list[str], *, progress: bool, overwrite: bool = False
) -> tuple[Path, dict[str, Any]]:
    """A fresh run (or, when the folder holds this very config's checkpoint, its continuation): kmim.launch."""
    cfg = agree(lambda: load_run_config(config, overrides))
    return start_pretraining(cfg, progress=progress, overwrite=overwrite)


def continue_run(run_dir: str, overrides: list[str], progress: bool) -> tuple[Path, dict[str, Any]]:
    """`--resume RUN_DIR`: kmim.launch.continue_pretraining."""
    return continue_pretraining(run_dir, overrides, progress)


def run(args: argparse.Namespace) -> int:
    progress = not args.quiet
    if args.resume and args.overwrite:
        raise KmimError("--overwrite cannot be combined with --resume: a resume continues the run in place")
    if args.resume and args.config:
        raise KmimError(
            "-c/--config cannot be combined with --resume: a resumed run keeps its saved config; "
            "pass changes as dotted overrides (e.g. train.epochs=80)"
        )
    (run_dir, res), main = in_process_group(
        lambda: (
            continue_run(args.resume, args.overrides, progress)
            if args.resume
            else start(args.config, args.overrides, progress=progress, overwrite=args.overwrite)
        )
    )
    if main:
        print(f"run directory: {run_dir}")
        print_json({k: v for k, v in res.items() if k != "encoder"})
    return 0


__all__ = ["add_arguments", "continue_run", "run", "start"]
