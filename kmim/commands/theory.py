"""`kmim theory`: augmentation-graph analysis of tokenizers (spectra, labeling error, connectivity, bounds).

Heavy imports happen inside `run`, so building the CLI parser stays cheap.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kmim.argtypes import int_list
from kmim.errors import KmimError
from kmim.progress import progress_bar


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `kmim theory`; defaults finish in well under 30 s on 2 CPU cores."""
    p.add_argument("--out", metavar="DIR", help="write DIR/theory.json and DIR/theory-*.png")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an earlier --out")
    p.add_argument("--classes", type=int, default=5, help="classes of the multi-class population (default 5)")
    p.add_argument(
        "--views-per-class", type=int, default=64, metavar="V", help="images (unmasked views) per class (default 64)"
    )
    p.add_argument("--window", type=int, default=4, help="a mask of image i hides one of parts i..i+w-1 (default 4)")
    p.add_argument("--overlap", type=float, default=0.1, help="probability a mask hides a shared part (default 0.1)")
    p.add_argument(
        "--tokens-per-class", type=int, default=8, metavar="L", help="l of class-wise-l / cross-class-l (default 8)"
    )
    p.add_argument("--kmeans-k", type=int, default=16, help="K of K-means on synthetic features (default 16)")
    p.add_argument("--k", type=int, default=None, help="k of the bound (default: the number of classes of each case)")
    p.add_argument("--c1", type=float, default=1.0, help="Zhang et al. constant on the spectral tail (default 1)")
    p.add_argument("--c2", type=float, default=1.0, help="Zhang et al. constant on the labeling error (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of K-means, mixing and subsampling (default 0)")
    p.add_argument(
        "--empirical",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also build the graph of mnist5k patches with pixel K-means tokens (default on)",
    )
    p.add_argument(
        "--empirical-per-class", type=int, default=100, metavar="N", help="mnist5k images per class (default 100)"
    )
    p.add_argument(
        "--empirical-k",
        type=int_list,
        default=[8, 32, 128],
        metavar="K,...",
        help="pixel K-means K (default 8,32,128)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _validate(args: argparse.Namespace) -> None:
    if args.k is not None and args.k < 1:
        raise KmimError(f"--k={args.k}: the feature dimension k must be at least 1")
    if args.c1 < 0 or args.c2 < 0:
        raise KmimError("--c1 and --c2 must be non-negative constants")
    if args.tokens_per_class > args.views_per_class:
        raise KmimError("--tokens-per-class must not exceed --views-per-class")
    if args.empirical and (args.empirical_per_class < 2 or any(k < 2 for k in args.empirical_k)):
        raise KmimError("--empirical-per-class and every --empirical-k value must be at least 2")


def _studies(args: argparse.Namespace, bar: Any) -> dict[str, Any]:
    """Run every study; `bar` is a tqdm bar advanced once per study."""
    from kmim.theory import experiments as E
    from kmim.theory.analysis import BoundConfig
    from kmim.theory.empirical import build_empirical

    spec = E.SyntheticSpec(
        views_per_class=args.views_per_class,
        window=args.window,
        overlap=args.overlap,
        tokens_per_class=args.tokens_per_class,
        kmeans_k=args.kmeans_k,
        seed=args.seed,
    )

    def bound(classes: int) -> BoundConfig:
        return BoundConfig(k=args.k or classes, c1=args.c1, c2=args.c2)

    cross = f"cross-class-{args.tokens_per_class}"
    out: dict[str, Any] = {"cases": {}, "orderings": {}}
    steps = [
        ("toy", E.toy_case),
        ("two_class", lambda: E.synthetic_case("two classes", 2, spec, bound=bound(2))),
        (
            "multi_class",
            lambda: E.synthetic_case(f"{args.classes} classes", args.classes, spec, bound=bound(args.classes)),
        ),
    ]
    for key, fn in steps:
        bar.set_description(f"theory: {key}")
        out["cases"][key] = fn()
        if key != "toy":
            out["orderings"][key] = E.ordering(out["cases"][key], cross)
        bar.update()
    bar.set_description("theory: robustness, merge, mixing")
    out["robustness"] = E.robustness_study(spec, bound(2))
    out["merge"] = E.merge_study(2, spec, bound(2))
    out["mixing"] = E.mixing_study(2, spec, bound(2))
    bar.update()
    if args.empirical:
        bar.set_description("theory: empirical mnist5k")
        graph = build_empirical(args.empirical_per_class, args.empirical_k, args.seed)
        out["cases"]["empirical_all"] = E.empirical_case(graph, bound(10), ink_only=False)
        out["cases"]["empirical_ink"] = E.empirical_case(graph, bound(10), ink_only=True)
        bar.update()
    return out


def _print(res: dict[str, Any], args: argparse.Namespace) -> None:
    from kmim.theory import report as R

    for key, case in res["cases"].items():
        print(R.case_table(case) + "\n")
        if key in res["orderings"]:
            print(R.ordering_text(res["orderings"][key], args.c1, args.c2) + "\n")
    print(R.robustness_table(res["robustness"]) + "\n")
    print(R.merge_table(res["merge"]) + "\n")
    print(R.mixing_table(res["mixing"]) + "\n")


def _write(out_dir: Path, res: dict[str, Any], args: argparse.Namespace) -> None:
    from kmim.runinfo import write_json
    from kmim.theory import report as R
    from kmim.theory.metrics import HAOCHEN_C1, HAOCHEN_C2

    forms = {
        "bound": f"Zhang et al. 2022 form: c1 * sum_(i>k) lambda_i^2 + c2 * alpha, c1={args.c1}, c2={args.c2}",
        "bound_haochen": f"HaoChen et al. 2021 form: {HAOCHEN_C1:g} alpha / (1 - lambda_(k+1)) + {HAOCHEN_C2:g} alpha",
        "alpha": "token labeling error 1 - sum_S max_c M(c, S)",
        "null": "a null bound is infinite (1 - lambda_(k+1) = 0)",
    }
    doc = {
        "argv": sys.argv,
        "settings": {k: v for k, v in vars(args).items() if not callable(v)},
        "bound_forms": forms,
        "cases": {k: R.case_json(c, res["orderings"].get(k)) for k, c in res["cases"].items()},
        "robustness": res["robustness"],
        "merge_invariance": res["merge"],
        "mixing": res["mixing"],
    }
    write_json(out_dir / "theory.json", R.jsonable(doc))
    for key, case in res["cases"].items():
        if key != "toy":
            R.plot_case(case, out_dir / f"theory-{key}.png")
    R.plot_mixing(res["mixing"], res["merge"], out_dir / "theory-mixing.png")


def run(args: argparse.Namespace) -> int:
    """Print the tables; with --out also write theory.json and the plots. Returns 0."""
    from threadpoolctl import threadpool_limits

    _validate(args)
    if args.out:
        from kmim.paths import check_writable

        check_writable(Path(args.out) / "theory.json", args.overwrite)
    total = 4 + int(args.empirical)
    with threadpool_limits(1), progress_bar(total=total, disable=args.quiet, file=sys.stderr, leave=False) as bar:
        res = _studies(args, bar)  # tiny dense matrices: one BLAS thread is fastest and immune to oversubscription
        if args.out:
            _write(Path(args.out), res, args)
    _print(res, args)
    if args.out:
        print(f"wrote {Path(args.out) / 'theory.json'} and theory-*.png")
    return 0
