"""What the studies share: an arm and the layout of its runs, the low-shot protocol, and for their verdict rules and
tables the metrics, grouping records by method, means and spreads, the test-set noise line, and figures."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kmim.metrics.stats import binomial_se

SHOTS, DRAWS = 10, 5  # low-shot: training images per class, draws of them
METRICS = (("knn_top1", "kNN"), ("linear_probe_top1", "linear probe"), ("lowshot_top1", "low-shot (10/class)"))


@dataclass(frozen=True)
class Arm:
    name: str  # the arm's record (DIR/records/NAME.json), unique in the study
    group: str  # what is averaged over seeds
    overrides: tuple[str, ...]
    seed: int = 0
    run: str = ""  # its run folder's name in a pool shared by studies (--runs); "" = the arm's name


@dataclass(frozen=True)
class Layout:
    """Where a study's arms train and what its main K is: `runs` is DIR/runs, or with `kmim study --runs POOL` a
    folder shared by the studies of one round, where the same run (K-MIM PIXEL at the main K, MAE, HOG, seeds 0-1)
    is trained once under one name and read by each study that has it; `k` is the preset's tokenizer.k (200 on
    mnist5k, the paper's 50 on Imagenette), the K of the K-MIM, HOG and feature arms."""

    runs: Path
    k: int = 200
    shared: bool = False
    cross: tuple[str, ...] = ()  # online-vs-offline: CAPI's predictor for the preset's encoder (online.cross_overrides)

    def run_name(self, arm: Arm) -> str:
        return arm.run if self.shared and arm.run else arm.name


def tok(name: str, k: int, *extra: str) -> tuple[str, ...]:
    """The overrides of a K-MIM arm: token targets from tokenizer `name` with K ids."""
    return ("train.target=tokens", f"tokenizer.name={name}", f"tokenizer.k={k}", *extra)


def by_group(records: list[dict[str, Any]], key: str) -> dict[str, list[float]]:
    return {g: [r[key] for r in recs] for g, recs in groups(records).items()}


def mean_sd(v: list[float]) -> tuple[float, float]:
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def noise(records: list[dict[str, Any]]) -> str:
    """The test set's own noise at the level the arms reach: sqrt(p (1 - p) / n) at p = their mean kNN top-1 (to
    the nearest 5 %; 80 % when no record has a kNN)."""
    n = records[0]["n_test"]
    knn = [r["knn_top1"] for r in records if r.get("knn_top1") is not None]
    p = 5.0 * round(float(np.mean(knn)) / 5.0) if knn else 80.0
    return f"one binomial SE of a top-1 near {p:.0f} % on {n} test images is {binomial_se(p, n):.1f} pt"


def groups(records: Iterable[dict[str, Any]], by: str = "group") -> dict[Any, list[dict[str, Any]]]:
    """Records by the value of their field `by`, in first-seen order."""
    out: dict[Any, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(r.get(by), []).append(r)
    return out


def cell(values: list[Any], fmt: str) -> str:
    if any(v is None for v in values):
        return "–"
    m, sd = mean_sd(values)
    return f"{m:{fmt}}" if len(values) < 2 else f"{m:{fmt}} ± {sd:{fmt}}"


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> None:
    from kmim.runinfo import atomic_write

    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    pyplot().close(fig)
