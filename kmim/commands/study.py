"""`kmim study NAME --out DIR`: run (or continue) one of the paper's claims as a resumable study
(kmim.studies.study holds the studies: arms, seeds, budgets and verdict rules)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from kmim.argtypes import add_config_arguments
from kmim.dist import in_process_group, is_main
from kmim.studies.study import STUDIES, run_study


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=(*STUDIES, "all"), help="which study")
    p.add_argument("--out", required=True, metavar="DIR", help="study folder (rerun the same command to continue)")
    add_config_arguments(p)
    p.add_argument(
        "--runs",
        metavar="POOL",
        help="train the arms in this folder, shared by the studies of one round: a run two studies have (same "
        "method, K and seed) is trained once (default: DIR/runs, per study)",
    )
    p.add_argument(
        "--commands",
        action="store_true",
        help="print each arm's training commands (to run them one by one, e.g. as separate jobs; the study, rerun "
        "without --commands, then evaluates the finished runs) and exit",
    )
    p.add_argument(
        "--status",
        action="store_true",
        help="print where the study stands, from its records (arms done and left, time, each group's mean so far) "
        "and exit; nothing is run or written",
    )


def arm_commands(
    name: str, out: Path, config: str | None, *, overrides: list[str], runs: str | None = None
) -> list[str]:
    """Each arm's training commands, in the study's order (feature tokenizers read earlier arms' runs): its
    pretraining (finetune-recipe: its random-init fine-tuning) with the study's and the arm's overrides, into the
    study folder's runs/, and for vs-mae the fine-tuning of that run (into RUN-finetune, as the study does), to run
    as separate (e.g. scheduler) jobs; the study, rerun, then finds the finished runs, trains nothing more and
    evaluates them."""
    from kmim.studies.finetune_recipe import RECIPES
    from kmim.studies.study import arm_overrides, arms, layout
    from kmim.studies.vs_mae import FINETUNE_SEEDS

    conf = ["-c", config] if config else []
    lines = []
    lay = layout(out, config, runs)
    for arm in arms(name, out, lay):
        ov = arm_overrides(arm, out, overrides, config=config, lay=lay)
        if arm.name in RECIPES:
            lines.append(shlex.join(["kmim", "finetune", "--random-init", *conf, *ov]))
            continue
        lines.append(shlex.join(["kmim", "pretrain", *conf, *ov]))
        if name == "vs-mae" and arm.seed in FINETUNE_SEEDS:
            lines.append(shlex.join(["kmim", "finetune", str(lay.runs / lay.run_name(arm))]))
    return lines


def study_status(name: str, out: Path, config: str | None, *, runs: str | None = None) -> list[str]:
    """The study's status lines (kmim.studies.status), its arms laid out as the run command lays them out; a folder
    the study would refuse (records of arms it does not have) is refused here too."""
    from kmim.studies.status import read_records, status_lines
    from kmim.studies.study import arms, check_records_belong, layout

    todo = arms(name, out, layout(out, config, runs))
    check_records_belong(name, out, todo)
    return status_lines(name, todo, read_records(out))


def run(args: argparse.Namespace) -> int:
    names = STUDIES if args.name == "all" else (args.name,)
    folders = [Path(args.out) / name if args.name == "all" else Path(args.out) for name in names]
    if args.commands:
        for name, out in zip(names, folders, strict=True):
            print("\n".join(arm_commands(name, out, args.config, overrides=list(args.overrides), runs=args.runs)))
        return 0
    if args.status:
        for name, out in zip(names, folders, strict=True):
            print("\n".join(study_status(name, out, args.config, runs=args.runs)))
        return 0

    def run_all() -> None:
        for name, out in zip(names, folders, strict=True):
            run_study(name, out, args.config, overrides=list(args.overrides), progress=not args.quiet, runs=args.runs)
            if is_main():
                print(f"wrote {out / 'report.md'}", file=sys.stdout)

    in_process_group(run_all)  # under torchrun every rank runs the arms together; rank 0 writes
    return 0
