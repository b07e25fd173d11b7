"""`kmim tcas`: score tokenizers against class labels (TCAS, NMI, purity, codebook usage, perplexity).

By default it fits and scores a grid on one dataset: `kmeans-pixels` with K in {10, 25, 50, 100, 200}, its
per-patch-normalized variant, `kmeans-hog`, and the `class-wise`, `cross-class` and `random` reference tokenizers
(all at the largest K of the grid), plus any `--tokenizer NAME:key=value,...` specs and saved `--file` tokenizers.
Tokenizers are fitted on the TRAIN split (eval view) and scored on the eval view of `--split` (train by default:
TCAS describes the tokenizer on the data it tokenizes during pretraining, and more patches mean a smaller
finite-sample bias; the `tcas_null` column gives the value a class-independent tokenizer would read).
Writes DIR/tcas.csv and DIR/tcas.png.
Heavy imports happen inside `run`, so building the CLI parser stays cheap.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Sized
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from kmim.argtypes import int_list
from kmim.errors import KmimError
from kmim.paths import check_writable

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from kmim.config import RunConfig
    from kmim.fit.data import FitData
    from kmim.tokenizers import Tokenizer

GRID_K = (10, 25, 50, 100, 200)
COLUMNS = (
    "tokenizer",
    "k",
    "tcas",
    "nmi",
    "purity",
    "usage",
    "perplexity",
    "dead_codes",
    "tcas_null",
    "patches",
    "fit_s",
)
_SPLIT_KV = re.compile(r",(?=[A-Za-z_][\w.]*=)")  # commas that start a new key=value


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by `kmim tcas` and `kmim show-tokens`: dataset, config and overrides."""
    p.add_argument("--data", metavar="NAME", help="dataset name (default: the config's, mnist5k)")
    p.add_argument("--data-root", metavar="DIR", help="local folder for imagefolder / cifar10 / cifar100")
    p.add_argument(
        "--tokenizer",
        action="append",
        default=[],
        metavar="SPEC",
        help="a tokenizer to fit on the train split, NAME[:key=value,...] over tokenizer.* fields, "
        "e.g. kmeans-pixels:k=300,patch_norm=true (repeatable)",
    )
    p.add_argument("--file", action="append", default=[], metavar="PATH", help="a saved tokenizer file (repeatable)")
    p.add_argument("-c", "--config", help="YAML preset: data.*, model.patch_size and tokenizer.* defaults")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.img_size=32 tokenizer.niter=10")
    p.add_argument("--device", default="cpu", help="device for encoding: cpu (default), cuda, auto")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `kmim tcas`; the default grid on mnist5k takes a few minutes on 2 CPU cores."""
    p.add_argument("--out", default="runs/tcas", metavar="DIR", help="writes DIR/tcas.csv and DIR/tcas.png")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an earlier --out")
    p.add_argument("--split", choices=("train", "test"), default="train", help="split to score (default train)")
    p.add_argument(
        "--grid",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="score the default grid (default on); --no-grid scores only --tokenizer / --file",
    )
    p.add_argument(
        "--grid-k",
        type=int_list,
        default=list(GRID_K),
        metavar="K,K,...",
        help="K of kmeans-pixels in the grid; the other grid rows use the largest (default 10,25,50,100,200)",
    )
    p.add_argument("--max-images", type=int, metavar="N", help="score a seeded random subset of N images")
    p.add_argument("--seed", type=int, default=0, help="seed of the --max-images subset (default 0)")
    add_data_arguments(p)


@dataclass
class Entry:
    """One tokenizer to score: a spec to fit (NAME[:k=v,...]) or a saved file."""

    label: str
    spec: str | None = None
    file: str | None = None
    grid: bool = False


def default_grid(ks: list[int]) -> list[Entry]:
    top = max(ks)
    specs = [f"kmeans-pixels:k={k}" for k in ks]
    specs += [f"kmeans-pixels:k={top},patch_norm=true", f"kmeans-hog:k={top}"]
    specs += [f"{name}:k={top}" for name in ("class-wise", "cross-class", "random")]
    return [Entry(s, spec=s, grid=True) for s in specs]


def parse_spec(spec: str) -> tuple[str, list[str]]:
    """'NAME[:key=value,...]' -> (NAME, ['tokenizer.key=value', ...])."""
    name, _, rest = spec.partition(":")
    if not name.strip():
        raise KmimError(f"tokenizer spec {spec!r} has no name: use NAME[:key=value,...], e.g. kmeans-pixels:k=50")
    pairs = [kv.strip() for kv in _SPLIT_KV.split(rest)] if rest.strip() else []
    for kv in pairs:
        if "=" not in kv:
            raise KmimError(f"tokenizer spec {spec!r}: {kv!r} is not key=value (e.g. kmeans-pixels:k=50,niter=10)")
    return name.strip(), [f"tokenizer.{kv}" for kv in pairs]


def base_config(args: argparse.Namespace) -> RunConfig:
    """The run config from -c, the overrides, --data and --data-root."""
    from kmim.resolve import load_run_config

    extra = [f"data.name={args.data}"] if args.data else []
    extra += [f"data.root={args.data_root}"] if args.data_root else []
    return load_run_config(args.config, [*args.overrides, *extra])


def spec_config(cfg: Any, spec: str) -> RunConfig:
    """cfg.tokenizer with the spec's name and fields applied (validated like any override)."""
    from kmim.config import config_to_dict
    from kmim.resolve import load_run_config

    name, overrides = parse_spec(spec)
    ov = [f"tokenizer.name={name}", "tokenizer.path=null", *overrides]
    return load_run_config(None, ov, base=config_to_dict(cfg))


def build_tokenizer(entry: Entry, cfg: Any, data: Any, *, progress: bool) -> Tokenizer:
    """Fit the entry's spec on `data` (the train split, kmim.fit.FitData) or load its file; refuses files fitted
    for other data."""
    from kmim.fit import fit_tokenizer, load_tokenizer

    info = data.info
    if entry.file is not None:
        tok = load_tokenizer(entry.file)
    else:
        tok = fit_tokenizer(spec_config(cfg, cast(str, entry.spec)).tokenizer, data, progress)
    tok.check_compatible(
        tok.patch_size, info.channels, info.mean, std=info.std, where=cast(str, entry.file or entry.spec)
    )
    if cfg.data.img_size % tok.patch_size:
        raise KmimError(f"{entry.label}: patch size {tok.patch_size} does not divide data.img_size={cfg.data.img_size}")
    return tok


def _row(entry: Entry, tok: Any, counts: Any, *, fit_s: float) -> dict[str, Any]:
    from kmim.metrics import codebook_usage, dead_codes, nmi, perplexity, purity, tcas_from_counts, tcas_null

    return {
        "tokenizer": entry.label,
        "k": tok.k,
        "tcas": tcas_from_counts(counts),
        "nmi": nmi(counts),
        "purity": purity(counts),
        "usage": codebook_usage(counts, tok.k),
        "perplexity": perplexity(counts),
        "dead_codes": dead_codes(counts, tok.k),
        "tcas_null": tcas_null(counts),
        "patches": int(counts.sum()),
        "fit_s": round(fit_s, 2),
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = "| tokenizer | K | TCAS | NMI | purity | usage | perplexity | dead | TCAS null |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['tokenizer']} | {r['k']} | {r['tcas']:.4f} | {r['nmi']:.4f} | {r['purity']:.4f} "
            f"| {r['usage']:.3f} | {r['perplexity']:.1f} | {r['dead_codes']} | {r['tcas_null']:.4f} |"
        )
    return "\n".join(lines)


def rank_agreement(rows: list[dict[str, Any]]) -> float | None:
    """Spearman correlation between TCAS and NMI over the rows (None under 3 rows or a constant column)."""
    import numpy as np
    from scipy.stats import spearmanr

    if len(rows) < 3:
        return None
    t, m = np.array([r["tcas"] for r in rows]), np.array([r["nmi"] for r in rows])
    if np.ptp(t) == 0 or np.ptp(m) == 0:
        return None
    return float(spearmanr(t, m).statistic)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import csv
    import io

    from kmim.runinfo import write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    write_text(path, buf.getvalue())


def plot_bars(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    """Bars of 1 - TCAS beside NMI, both on a log axis (both are higher for more class-aligned tokens; the
    tokenizers of interest differ by decades near TCAS = 1, invisible on a linear axis). Labels give the values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from kmim.runinfo import atomic_write

    floor = 1e-4
    names = [r["tokenizer"] for r in rows][::-1]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.42 * len(rows) + 1.8), sharey=True)
    panels = (
        (axes[0], [1 - r["tcas"] for r in rows], [f"TCAS {r['tcas']:.3f}" for r in rows], "1 - TCAS", "tab:red"),
        (axes[1], [r["nmi"] for r in rows], [f"NMI {r['nmi']:.3f}" for r in rows], "NMI(token, class)", "tab:blue"),
    )
    for ax, vals, texts, label, color in panels:
        v = np.maximum(np.array(vals[::-1]), floor)
        ax.barh(names, v, color=color)
        ax.set_xscale("log")
        ax.set_xlim(floor, 1.0)
        ax.set_xlabel(f"{label} (log scale; larger = tokens more class-specific)")
        for i, (x, t) in enumerate(zip(v, texts[::-1], strict=True)):
            inside = x > 0.05
            ax.text(
                x * (0.85 if inside else 1.15),
                i,
                t,
                va="center",
                ha="right" if inside else "left",
                color="white" if inside else "black",
                fontsize=8,
            )
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def _entries(args: argparse.Namespace) -> list[Entry]:
    entries = default_grid(args.grid_k) if args.grid else []
    entries += [Entry(s, spec=s) for s in args.tokenizer]
    entries += [Entry(f, file=f) for f in args.file]
    if not entries:
        raise KmimError("nothing to score: drop --no-grid or pass --tokenizer SPEC / --file PATH")
    return entries


def _datasets(cfg: Any, args: argparse.Namespace, patch_size: int) -> tuple[FitData, Dataset[Any]]:
    import torch
    from torch.utils.data import Subset

    from kmim.data import build_dataset
    from kmim.fit import training_split

    data = training_split(cfg)
    ds = data.ds if args.split == "train" else build_dataset(cfg.data, "test", min_side=patch_size)[0]
    if args.max_images is not None:
        if args.max_images < 1:
            raise KmimError(f"--max-images={args.max_images} must be at least 1")
        if args.max_images < len(cast(Sized, ds)):
            g = torch.Generator().manual_seed(args.seed)
            ds = Subset(ds, torch.randperm(len(cast(Sized, ds)), generator=g)[: args.max_images].sort().values.tolist())
    return data, ds


def _registered(entry: Entry) -> bool:
    from kmim.fit import TOKENIZERS

    return entry.spec is None or parse_spec(entry.spec)[0] in TOKENIZERS


def run(args: argparse.Namespace) -> int:
    from kmim.dist import resolve_device
    from kmim.eval.tokens import token_counts
    from kmim.fit import TOKENIZERS
    from kmim.models import resolve_spec

    progress = not args.quiet
    for name in ("tcas.csv", "tcas.png"):
        check_writable(Path(args.out) / name, args.overwrite)
    cfg = base_config(args)
    patch = resolve_spec(cfg.model).patch_size
    data, ds = _datasets(cfg, args, patch)
    info = data.info
    device = resolve_device(args.device, "--device")
    rows, skipped = [], []
    for entry in _entries(args):
        if entry.grid and not _registered(entry):
            skipped.append(entry.label)
            print(
                f"note: skipped grid entry {entry.label}: that tokenizer is not registered "
                f"(registered: {', '.join(sorted(TOKENIZERS))})"
            )
            continue
        t0 = time.perf_counter()
        tok = build_tokenizer(entry, cfg, data, progress=progress)
        fit_s = time.perf_counter() - t0 if entry.file is None else 0.0
        counts = token_counts(
            tok, ds, len(info.classes), device=device, progress=progress, num_workers=cfg.data.num_workers
        )
        rows.append(_row(entry, tok, counts, fit_s=fit_s))
        if progress:
            print(f"{entry.label}: TCAS {rows[-1]['tcas']:.4f}  NMI {rows[-1]['nmi']:.4f}")
    if not rows:
        raise KmimError(f"no tokenizer could be scored: {', '.join(skipped)} are not registered")
    out = Path(args.out)
    print(f"\nTCAS on {cfg.data.name} {args.split} split, {rows[0]['patches']:,} patches of {patch}x{patch}\n")
    print(markdown_table(rows))
    print(
        "\nTCAS null: the TCAS a class-independent tokenizer with the same token sizes would read on these patches; "
        "TCAS null - TCAS is the class information the tokens carry (lower TCAS is better)"
    )
    rho = rank_agreement(rows)
    if rho is not None:
        print(f"\nSpearman rank correlation of TCAS with NMI over {len(rows)} tokenizers: {rho:+.3f}")
    if skipped:
        print(f"skipped (not registered): {', '.join(skipped)}")
    write_csv(out / "tcas.csv", rows)
    plot_bars(out / "tcas.png", rows, f"{cfg.data.name} ({args.split} split, {patch}x{patch} patches)")
    print(f"wrote {out / 'tcas.csv'} and {out / 'tcas.png'}")
    return 0
