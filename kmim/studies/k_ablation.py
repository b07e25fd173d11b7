"""The k-ablation study's verdict rule and tables, written before any of its arms ran. k-ablation: the K with the best
mean over seeds; "agree" (best at K = 50) when it is 50 and its lead over the runner-up exceeds the larger seed std
of the two; "disagree" when another K leads K = 50 by more than that; "not resolved" otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kmim.studies.common import METRICS, Arm, Layout, by_group, mean_sd, noise, pyplot, save, tok

K_GRID = (10, 25, 50, 100, 200, 1000)


def arms(lay: Layout) -> list[Arm]:
    """PIXEL K-means at every K of K_GRID, 2 seeds."""
    return [
        Arm(f"pixels-k{kk}-s{s}", f"K={kk}", tok("kmeans-pixels", kk), s, run=f"pixels-k{kk}-s{s}")
        for s in (0, 1)
        for kk in K_GRID
    ]


def _k_summary(records: list[dict[str, Any]], key: str) -> dict[int, tuple[float, float]]:
    by = by_group(records, key)
    return {int(g.split("=")[1]): mean_sd(v) for g, v in by.items()}


def k_rules(records: list[dict[str, Any]]) -> list[str]:
    out = []
    for key, label in METRICS:
        s = _k_summary(records, key)
        order = sorted(s, key=lambda k: -s[k][0])
        best, second = order[0], order[1]
        if best == 50:
            margin = max(s[50][1], s[second][1])
            word = "agree" if s[50][0] - s[second][0] > margin else "not resolved"
        else:
            margin = max(s[best][1], s[50][1])
            word = "disagree" if s[best][0] - s[50][0] > margin else "not resolved"
        out.append(
            f"{label}: best K = {best} ({s[best][0]:.1f}; K=50: {s[50][0]:.1f} ± {s[50][1]:.1f}): **{word}** "
            "with the paper's best K = 50."
        )
    return [*out, f"Noise: {noise(records)}; 2 seeds per K (± is their sd)."]


def k_tables(records: list[dict[str, Any]], out: Path) -> list[str]:
    lines = [
        "## K ablation (mean ± sd over seeds)",
        "",
        "| K | TCAS | kNN | linear probe | low-shot |",
        "|---:|---:|---:|---:|---:|",
    ]
    sums = {key: _k_summary(records, key) for key in ("tcas", *(m for m, _ in METRICS))}
    for k in sorted(sums["knn_top1"]):
        cells = [f"{sums[m][k][0]:.1f} ± {sums[m][k][1]:.1f}" for m, _ in METRICS]
        lines.append(f"| {k} | {sums['tcas'][k][0]:.4f} | {' | '.join(cells)} |")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, label in METRICS:
        ks = sorted(sums[m])
        ax.errorbar(ks, [sums[m][k][0] for k in ks], yerr=[sums[m][k][1] for k in ks], label=label, marker="o")
    ax.set_xscale("log")
    ax.set_xlabel("K (pixel K-means)")
    ax.set_ylabel("top-1 %")
    ax.legend()
    save(fig, out / "k-ablation.png")
    return [*lines, "", "![K ablation](k-ablation.png)"]
