"""`kmim pretrain`: MIM pretraining (K-MIM tokens or MAE pixels) into a run directory, or `--resume` one.

Under torchrun every process runs this command: inputs are checked on all of them (a problem on any stops all,
with one line), the tokenizer is fitted once on rank 0 (or read from tokenizer.path by every rank) and sent to the
others, and only rank 0 writes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kmim.argtypes import add_config_arguments, print_json
from kmim.engine.checkpoint import latest_checkpoint
from kmim.engine.dist import agree, in_process_group, is_main
from kmim.engine.pretrain import pretrain, resume
from kmim.errors import KmimError
from kmim.fit import from_blob
from kmim.launch import shared_tokenizer
from kmim.paths import check_folder_writable
from kmim.resolve import check_batch, check_images, check_tokenizer_path, load_run_config
from kmim.runs import RunDir


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
    """A fresh run: check the config and the output, load or fit the tokenizer, then train. When the run folder
    holds a checkpoint of this very config (the same command line, run again after a preemption or a kill), it is
    continued instead."""
    cfg = agree(lambda: load_run_config(config, overrides))
    run_dir = Path(cfg.out_dir) / cfg.name
    if not overwrite and agree(lambda: RunDir(run_dir).same_run(cfg)):
        if progress and is_main():
            print(f"note: {run_dir} holds this run (same config): continuing it from its last checkpoint")
        return continue_run(str(run_dir), [], progress)

    def check_output() -> None:
        check_batch(cfg, "train")
        check_tokenizer_path(cfg)
        check_folder_writable(run_dir)
        RunDir(run_dir).check_new(cfg, overwrite)

    agree(check_output)
    scan = agree(lambda: check_images(cfg, ("train",), run_dir, progress=progress and is_main()))
    return pretrain(cfg, shared_tokenizer(cfg, progress), progress, overwrite=overwrite, scan=scan)


def continue_run(run_dir: str, overrides: list[str], progress: bool) -> tuple[Path, dict[str, Any]]:
    """Resume: the checkpoint's config plus overrides, its tokenizer, its weights, optimizer and RNG state. A
    damaged last.pt falls back to the newest intact numbered checkpoint, with a note."""
    path = Path(run_dir)
    ckpt, where, note = agree(lambda: latest_checkpoint(path))
    if ckpt.get("kind") == "finetune":
        raise KmimError(f"{path} is a fine-tuning run: resume it with `kmim finetune --resume {path}`")
    cfg = agree(lambda: load_run_config(None, overrides, base=ckpt["config"]))
    agree(lambda: check_batch(cfg, "train"))
    if note and is_main():
        print(f"note: {note}", file=sys.stderr)
    scan = agree(lambda: check_images(cfg, ("train",), path, progress=progress and is_main()))
    tok = None if ckpt.get("tokenizer") is None else from_blob(ckpt["tokenizer"], str(where))
    return resume(path, cfg, ckpt, tokenizer=tok, progress=progress, scan=scan)


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
