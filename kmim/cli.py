"""The `kmim` command: argument parsing and dispatch only. Each command is a module with
`add_arguments(parser)` and `run(args) -> exit code`; heavy imports happen when a command runs."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import cast

from kmim.errors import PREEMPTED_EXIT, KmimError, Preempted, one_line

COMMANDS = {
    "prepare": (
        "kmim.commands.prepare",
        "one-time resized copy of an ImageFolder tree (short side 256) for fast loading",
    ),
    "tokenize": ("kmim.commands.tokenize", "fit a tokenizer on a training split and save it"),
    "pretrain": ("kmim.commands.pretrain", "MIM pretraining (K-MIM tokens or MAE pixels); writes a run directory"),
    "finetune": ("kmim.commands.finetune", "fine-tune a pretrained encoder end to end (MAE recipe); top-1 on test"),
    "knn": ("kmim.commands.evaluate", "weighted kNN (k=20, T=0.07) top-1 on the test split of a frozen encoder"),
    "probe": (
        "kmim.commands.evaluate",
        "linear probe (eval.probe=adamw | lars) or attentive probe (eval.probe=attentive) top-1 on the test split",
    ),
    "export": ("kmim.commands.export", "hub-ready folder of a run's encoder (model.safetensors, config.json, card)"),
    "demo": (
        "kmim.commands.demo",
        "K-MIM vs MAE vs random init (mnist5k or Imagenette); writes report.md, results.json",
    ),
    "study": (
        "kmim.commands.study",
        "the paper's claims as resumable studies: tcas-vs-probe, k-ablation, vs-mae, online-vs-offline, all",
    ),
    "tcas": ("kmim.commands.tcas", "score tokenizers without training: TCAS, NMI, purity, usage, perplexity"),
    "show-tokens": ("kmim.commands.show_tokens", "PNG grid of images with each patch coloured by its token id"),
    "theory": ("kmim.commands.theory", "augmentation-graph analysis of tokenizers (spectra, labeling error, bound)"),
}


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line (the usage itself is on --help), exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command with its one-line help; the arguments only of `command` (None: of all), so `kmim --help` and a
    usage error import no command module (and no torch)."""
    parser = OneLineParser(prog="kmim", description="Masked image modeling with discrete K-means tokens.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, what) in COMMANDS.items():
        p = sub.add_parser(name, help=what, description=what)
        if command in (None, name):
            importlib.import_module(module).add_arguments(p)
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse; dotted overrides may also stand after options (`kmim finetune RUN -q train.x=1`), where argparse
    alone would not collect them into `overrides`."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(next((a for a in argv if not a.startswith("-")), ""))  # kmim has no global option
    args, extra = parser.parse_known_args(argv)
    stray = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    path = getattr(args, "path", None)
    if path is not None and "=" in path:  # an optional PATH takes the first override when the path is left out
        args.path, args.overrides = None, [path, *args.overrides]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        return cast(int, importlib.import_module(COMMANDS[args.command][0]).run(args))
    except KmimError as e:
        rank = os.environ.get("RANK", "0")  # read now: a SLURM launch sets it when the command joins its group
        if not getattr(e, "agreed", False):  # this process alone hit it (e.g. an image decoded mid-run)
            where = f"rank {rank}: " if rank != "0" else ""
            print(f"kmim {args.command}: error: {where}{one_line(e)}", file=sys.stderr)
        elif rank == "0":  # under torchrun every process failed alike: rank 0 says it
            print(f"kmim {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        rank = os.environ.get("RANK", "0")
        if _peer_gone(e):
            print(
                f"kmim {args.command}: error: rank {rank} stopped because another process did (its error is above)",
                file=sys.stderr,
            )
            return 2
        if _collective_failed(e):  # NCCL / gloo's own failure (bring-up, timeout): its message, on this rank
            print(f"kmim {args.command}: error: rank {rank}: a collective failed: {one_line(e)}", file=sys.stderr)
            return 2
        raise
    except Preempted as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"kmim {args.command}: preempted: {e}", file=sys.stderr)
        return PREEMPTED_EXIT
    except KeyboardInterrupt:
        print("kmim: interrupted", file=sys.stderr)
        return 130


PEER_GONE = ("Connection closed by peer", "Connection reset by peer")  # gloo's words when the other end exited


def _peer_gone(e: RuntimeError) -> bool:
    """A collective failed because another process exited: its own error is printed where it happened."""
    return int(os.environ.get("WORLD_SIZE", "1")) >= 2 and any(s in str(e) for s in PEER_GONE)


def _collective_failed(e: RuntimeError) -> bool:
    """NCCL or gloo failed for a reason of its own (a node that cannot be reached, a timeout): shown, not hidden."""
    return int(os.environ.get("WORLD_SIZE", "1")) >= 2 and any(s in str(e) for s in ("NCCL", "nccl", "gloo", "Gloo"))


if __name__ == "__main__":
    sys.exit(main())
