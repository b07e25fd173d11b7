"""`kmim demo`: K-MIM vs MAE vs random init on mnist5k, end to end (kmim.studies.demo holds the pipeline)."""

from __future__ import annotations

import argparse

from kmim.argtypes import add_config_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--fast", action="store_true", help="a 1-minute smoke version (numbers are not meaningful)")


def run(args: argparse.Namespace) -> int:
    from kmim.studies.demo import run_demo

    run_demo(args.out, args.config, args.overrides, fast=args.fast, progress=not args.quiet)
    return 0
