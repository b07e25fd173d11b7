"""`kmim finetune RUN_DIR|encoder.pt`: end-to-end fine-tuning of a pretrained encoder on the test split's task
(the paper's main metric); writes a run directory with results.json (`finetune_top1`), checkpoints and model.pt.

The run's config is the source run's (data, model) with `-c` and the overrides on top; presets:
configs/mnist5k_finetune.yaml, configs/in100_vits16_finetune.yaml, configs/in1k_vitb16_finetune.yaml.
"""

from __future__ import annotations

import argparse

from kmim.argtypes import add_config_arguments, print_json
from kmim.dist import in_process_group
from kmim.errors import KmimError
from kmim.launch import continue_run, start


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", help="pretraining run directory, checkpoint (.pt) or encoder.pt")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the fine-tuning run in RUN_DIR")
    p.add_argument(
        "--random-init",
        action="store_true",
        help="fine-tune an untrained encoder of the config's model (MAE's initialisation): the baseline",
    )
    p.add_argument("--overwrite", action="store_true", help="replace what the run directory holds")
    p.add_argument(
        "--allow-unfinished",
        action="store_true",
        help="fine-tune a pretraining run that has not reached its last epoch (refused otherwise)",
    )
    add_config_arguments(p)


def run(args: argparse.Namespace) -> int:
    progress = not args.quiet
    if (args.path is not None) + (args.resume is not None) + args.random_init != 1:
        raise KmimError("give one of: a pretrained encoder PATH, --random-init, or --resume RUN_DIR")
    if args.resume and (args.config or args.overwrite):
        raise KmimError("--resume keeps the run's saved config and folder: pass changes as dotted overrides")
    (run_dir, res), main = in_process_group(
        lambda: (
            continue_run(args.resume, args.overrides, progress)
            if args.resume
            else start(
                args.path,
                args.config,
                args.overrides,
                progress=progress,
                overwrite=args.overwrite,
                allow_unfinished=args.allow_unfinished,
            )
        )
    )
    if main:
        print(f"run directory: {run_dir}")
        print_json({k: v for k, v in res.items() if k != "classifier"})
    return 0
