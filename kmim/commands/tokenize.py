"""`kmim tokenize`: fit a tokenizer on the training split and save it."""

from __future__ import annotations

import argparse

from kmim.argtypes import add_config_arguments
from kmim.fit import fit_tokenizer, training_split
from kmim.paths import check_writable
from kmim.resolve import load_run_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--out", required=True, help="tokenizer file to write (e.g. tokenizer.pt)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args: argparse.Namespace) -> int:
    cfg = load_run_config(args.config, args.overrides)
    check_writable(args.out, overwrite=args.overwrite, flag="--overwrite")
    tok = fit_tokenizer(cfg.tokenizer, training_split(cfg), progress=not args.quiet)
    tok.save(args.out)
    inertia = tok.meta.get("fit", {}).get("inertia")
    fit = f", inertia {inertia:.4g}" if inertia is not None else ""
    print(f"saved {tok.kind} tokenizer (K={tok.k}{fit}) to {args.out}")
    return 0
