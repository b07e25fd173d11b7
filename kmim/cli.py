"""The `kmim` command: argument parsing and dispatch only."""

from __future__ import annotations

import argparse
import importlib
import sys

from kmim.errors import KmimError

# commands implemented by a module with `add_arguments(parser)` and `run(args) -> int`
MODULE_COMMANDS = {
    "tcas": ("kmim.studies.tcas", "score tokenizers without training: TCAS, NMI, purity, usage, perplexity"),
    "show-tokens": ("kmim.studies.show_tokens", "PNG grid of images with each patch coloured by its token id"),
    "theory": ("kmim.theory.command", "augmentation-graph analysis of tokenizers (spectra, labeling error, bound)"),
}


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="YAML preset (see configs/); defaults are the mnist5k CPU setting")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=5 data.name=imagefolder")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kmim", description="Masked image modeling with discrete K-means tokens.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tokenize", help="fit a tokenizer on a training split and save it")
    _config_args(p)
    p.add_argument("--out", required=True, help="tokenizer file to write (e.g. tokenizer.pt)")

    p = sub.add_parser("pretrain", help="MIM pretraining (K-MIM tokens or MAE pixels); writes a run directory")
    _config_args(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")

    for name, what in (("knn", "weighted kNN (k=20, T=0.07)"), ("probe", "linear probe (BatchNorm + linear)")):
        p = sub.add_parser(name, help=f"{what} top-1 on the test split, for a run directory or checkpoint")
        p.add_argument("path", help="run directory, checkpoint (.pt) or encoder.pt")
        _config_args(p)

    p = sub.add_parser("demo", help="K-MIM vs MAE vs random init on mnist5k; writes report.md and results.json")
    _config_args(p)
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--fast", action="store_true", help="a 1-minute smoke version (numbers are not meaningful)")

    for name, (module, what) in MODULE_COMMANDS.items():
        importlib.import_module(module).add_arguments(sub.add_parser(name, help=what))
    return parser


def dispatch(args: argparse.Namespace) -> int:
    from kmim import commands
    from kmim.config import load_config

    progress = not getattr(args, "quiet", False)
    if args.command == "tokenize":
        desc = commands.tokenize(load_config(args.config, args.overrides), args.out, progress)
        inertia = desc.get("fit", {}).get("inertia")
        fit = f", inertia {inertia:.4g}" if inertia is not None else ""
        print(f"saved {desc['kind']} tokenizer (K={desc['k']}{fit}) to {args.out}")
    elif args.command == "pretrain":
        cfg = None if args.resume else load_config(args.config, args.overrides)
        run_dir, res = commands.run_pretrain(cfg, args.resume, args.overrides, progress)
        print(f"run directory: {run_dir}")
        commands.print_json({k: v for k, v in res.items() if k != "encoder"})
    elif args.command in ("knn", "probe"):
        commands.print_json(commands.run_eval(args.path, args.config, args.overrides, (args.command,), progress))
    elif args.command == "demo":
        from kmim.studies.demo import run_demo

        run_demo(args.out, args.config, args.overrides, fast=args.fast, progress=progress)
    elif args.command in MODULE_COMMANDS:
        return importlib.import_module(MODULE_COMMANDS[args.command][0]).run(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return dispatch(args)
    except KmimError as e:
        print(f"kmim {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kmim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
