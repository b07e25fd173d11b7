"""`kmim study NAME --out DIR`: run (or continue) one of the paper's claims as a resumable study
(kmim.studies.study holds the studies: arms, seeds, budgets and verdict rules)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from kmim.argtypes import add_config_arguments
from kmim.errors import KmimError
from kmim.studies.study import STUDIES, run_study


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=(*STUDIES, "all"), help="which study")
    p.add_argument("--out", required=True, metavar="DIR", help="study folder (rerun the same command to continue)")
    add_config_arguments(p)
    p.add_argument(
        "--commands",
        action="store_true",
        help="print each arm's training commands (run them under torchrun; the study, rerun without --commands in "
        "one process, then evaluates the finished runs) and exit",
    )


def arm_commands(name: str, out: Path, config: str | None, *, overrides: list[str]) -> list[str]:
    """Each arm's training commands, in the study's order (feature tokenizers read earlier arms' runs): its
    pretraining (finetune-recipe: its random-init fine-tuning) with the study's and the arm's overrides, into the
    study folder's runs/, and for vs-mae the fine-tuning of that run (into RUN-finetune, as the study does). Run them
    under torchrun; the study, rerun in one process, then finds the finished runs, trains nothing more and
    evaluates them."""
    from kmim.studies.study import FINETUNE_SEEDS, RECIPES, arm_overrides, arms

    conf = ["-c", config] if config else []
    lines = []
    for arm in arms(name, out):
        ov = arm_overrides(arm, out, overrides, config=config)
        if arm.name in RECIPES:
            lines.append(shlex.join(["kmim", "finetune", "--random-init", *conf, *ov]))
            continue
        lines.append(shlex.join(["kmim", "pretrain", *conf, *ov]))
        if name == "vs-mae" and arm.seed in FINETUNE_SEEDS:
            lines.append(shlex.join(["kmim", "finetune", str(out / "runs" / arm.name)]))
    return lines


def refuse_torchrun() -> None:
    """A study runs its arms one after another in one process: under torchrun every rank would run (and write) the
    whole study on its own, so it is refused before any work."""
    world = os.environ.get("WORLD_SIZE", "1")
    if world != "1":
        raise KmimError(
            f"kmim study runs in one process (WORLD_SIZE={world} here): launch it without torchrun (one GPU), or "
            "run its arms one by one under torchrun: `kmim study ... --commands` prints their kmim commands"
        )


def run(args: argparse.Namespace) -> int:
    names = STUDIES if args.name == "all" else (args.name,)
    if args.commands:
        for name in names:
            out = Path(args.out) / name if args.name == "all" else Path(args.out)
            print("\n".join(arm_commands(name, out, args.config, overrides=list(args.overrides))))
        return 0
    refuse_torchrun()
    for name in names:
        out = Path(args.out) / name if args.name == "all" else Path(args.out)
        run_study(name, out, args.config, overrides=list(args.overrides), progress=not args.quiet)
        print(f"wrote {out / 'report.md'}", file=sys.stdout)
    return 0
