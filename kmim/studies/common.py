"""What the studies' verdict rules and tables share: the metrics, grouping records by method, means and spreads, the
test-set noise line, and figures."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from kmim.metrics.stats import binomial_se

METRICS = (("knn_top1", "kNN"), ("linear_probe_top1", "linear probe"), ("lowshot_top1", "low-shot (10/class)"))


def by_group(records: list[dict[str, Any]], key: str) -> dict[str, list[float]]:
    return {g: [r[key] for r in recs] for g, recs in groups(records).items()}


def mean_sd(v: list[float]) -> tuple[float, float]:
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def noise(records: list[dict[str, Any]]) -> str:
    n = records[0]["n_test"]
    return f"one binomial SE of a top-1 near 80 % on {n} test images is {binomial_se(80.0, n):.1f} pt"


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
