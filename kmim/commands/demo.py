"""`kmim demo`: K-MIM vs MAE vs random init on mnist5k or Imagenette, end to end (kmim.studies.demo holds the
pipeline)."""

from __future__ import annotations

import argparse

from kmim.argtypes import add_config_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--fast", action="store_true", help="a 1-minute smoke version (numbers are not meaningful)")
    p.add_argument(
        "--data",
        choices=("mnist5k", "imagenette"),
        default="mnist5k",
        help="mnist5k (built in, the default) or imagenette (natural photos at 64 px; needs --data-root)",
    )
    p.add_argument(
        "--data-root", metavar="DIR", help="Imagenette's folder (train/, val/), e.g. a 72-px kmim prepare copy"
    )


def run(args: argparse.Namespace) -> int:
    from kmim.studies.demo import run_demo

    run_demo(
        args.out,
        args.config,
        args.overrides,
        fast=args.fast,
        progress=not args.quiet,
        data=args.data,
        data_root=args.data_root,
    )
    return 0
