"""`kmim tokenize`: fit a tokenizer on the training split and save it.

Under torchrun (`torchrun --nproc-per-node N -m kmim tokenize ...`) a K-means tokenizer is fitted by all processes
together: each decodes every N-th image (with data.num_workers DataLoader workers), the patch sample is gathered,
rank 0 runs K-means and writes the file, which equals the one-process file. Kinds that train a model first (vq, a
supervised encoder) and the oracles are fitted by rank 0 alone, the others waiting for it past the process group's
30-minute timeout (up to KMIM_MAIN_WAIT_S, 48 h: `kmim.dist.on_main`).
"""

from __future__ import annotations

import argparse
from typing import cast

from kmim.argtypes import add_config_arguments
from kmim.config import RunConfig
from kmim.dist import agree, get_rank, get_world_size, in_process_group, is_main, on_main
from kmim.fit import FitData, fit_tokenizer, shards_fit, training_split
from kmim.paths import check_writable
from kmim.resolve import load_run_config
from kmim.tokenizers import Tokenizer


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--out", required=True, help="tokenizer file to write (e.g. tokenizer.pt)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def fit_and_save(
    config: str | None, overrides: list[str], out: str, *, overwrite: bool, progress: bool
) -> Tokenizer | None:
    """Fit and write the tokenizer file; the tokenizer on rank 0 (None on the other ranks of a rank-0-alone fit)."""
    cfg = agree(lambda: load_run_config(config, overrides))
    agree(lambda: check_writable(out, overwrite=overwrite, flag="--overwrite"))
    sharded = shards_fit(cfg.tokenizer)
    rank, world = (get_rank(), get_world_size()) if sharded else (0, 1)
    data = agree(lambda: training_split(cfg, rank, world))
    if sharded:  # every rank reads its share; rank 0 writes while the others wait
        tok: Tokenizer | None = fit_tokenizer(cfg.tokenizer, data, progress and is_main())
        on_main(lambda: cast(Tokenizer, tok).save(out))
        return tok
    return on_main(lambda: _fit_and_save(cfg, data, out, progress=progress))  # rank 0 alone, the others wait


def _fit_and_save(cfg: RunConfig, data: FitData, out: str, *, progress: bool) -> Tokenizer:
    tok = fit_tokenizer(cfg.tokenizer, data, progress)
    tok.save(out)
    return tok


def run(args: argparse.Namespace) -> int:
    tok, main = in_process_group(
        lambda: fit_and_save(
            args.config, list(args.overrides), args.out, overwrite=args.overwrite, progress=not args.quiet
        )
    )
    if main and tok is not None:  # rank 0 holds the tokenizer
        inertia = tok.meta.fit.get("inertia")
        fit = f", inertia {inertia:.4g}" if inertia is not None else ""
        print(f"saved {tok.kind} tokenizer (K={tok.k}{fit}) to {args.out}")
    return 0
