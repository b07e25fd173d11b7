"""`kmim study NAME --out DIR`: run (or continue) one of the paper's claims as a resumable study
(kmim.studies.study holds the studies: arms, seeds, budgets and verdict rules)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kmim.argtypes import add_config_arguments
from kmim.studies.study import STUDIES, run_study


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=(*STUDIES, "all"), help="which study")
    p.add_argument("--out", required=True, metavar="DIR", help="study folder (rerun the same command to continue)")
    add_config_arguments(p)


def run(args: argparse.Namespace) -> int:
    names = STUDIES if args.name == "all" else (args.name,)
    for name in names:
        out = Path(args.out) / name if args.name == "all" else Path(args.out)
        run_study(name, out, args.config, overrides=list(args.overrides), progress=not args.quiet)
        print(f"wrote {out / 'report.md'}", file=sys.stdout)
    return 0
