"""`kmim tokenize`: fit a tokenizer on the training split and save it.

Under torchrun (`torchrun --nproc-per-node N -m kmim tokenize ...`) a K-means tokenizer is fitted by all processes
together: each decodes every N-th image (with data.num_workers DataLoader workers), the patch sample is gathered,
rank 0 runs K-means and writes the file, which equals the one-process file. Kinds that train a model first (vq, a
supervised encoder) and the oracles are fitted by rank 0 alone.
"""

from __future__ import annotations

import argparse

from kmim.argtypes import add_config_arguments
from kmim.engine.dist import agree, barrier, get_rank, get_world_size, in_process_group, is_main
from kmim.fit import fit_tokenizer, shards_fit, training_split
from kmim.paths import check_writable
from kmim.resolve import load_run_config
from kmim.tokenizers import Tokenizer


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--out", required=True, help="tokenizer file to write (e.g. tokenizer.pt)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def fit_and_save(config: str | None, overrides: list[str], out: str, *, overwrite: bool, progress: bool) -> Tokenizer:
    cfg = agree(lambda: load_run_config(config, overrides))
    agree(lambda: check_writable(out, overwrite=overwrite, flag="--overwrite"))
    sharded = shards_fit(cfg.tokenizer)
    rank, world = (get_rank(), get_world_size()) if sharded else (0, 1)
    data = agree(lambda: training_split(cfg, rank, world))
    tok = None
    if sharded or is_main():
        tok = fit_tokenizer(cfg.tokenizer, data, progress and is_main())
    if is_main():
        tok.save(out)  # type: ignore[union-attr]
    barrier()  # the others wait for rank 0's file before the group closes
    return tok  # type: ignore[return-value]


def run(args: argparse.Namespace) -> int:
    tok, main = in_process_group(
        lambda: fit_and_save(
            args.config, list(args.overrides), args.out, overwrite=args.overwrite, progress=not args.quiet
        )
    )
    if main:
        inertia = tok.meta.fit.get("inertia")
        fit = f", inertia {inertia:.4g}" if inertia is not None else ""
        print(f"saved {tok.kind} tokenizer (K={tok.k}{fit}) to {args.out}")
    return 0
