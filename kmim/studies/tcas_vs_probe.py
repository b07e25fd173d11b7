"""The tcas-vs-probe study's verdict rule and tables, written before any of its arms ran. tcas-vs-probe: Spearman
rho(TCAS, accuracy) over tokenizers with a 95 % bootstrap interval: "agree" (lower TCAS, higher accuracy) when the
interval lies below 0, "disagree" when above 0, "not resolved" otherwise; TCAS is said to predict better than NMI
when |rho(TCAS)| > |rho(NMI)| (no significance claimed). With several seeds per tokenizer (the 40-epoch round; added
2026-12-01 before any of its arms ran) each tokenizer is one point: the means over its seeds of TCAS, NMI and
accuracy; the bootstrap resamples tokenizers; rho is also given per seed, and the seed spread as the mean over
tokenizers of the accuracy sd."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kmim.metrics.stats import bootstrap_ci, pearson, spearman
from kmim.studies.common import METRICS, Arm, Layout, cell, groups, mean_sd, noise, pyplot, save, tok


def arms(lay: Layout) -> list[Arm]:
    """The tokenizers of `tcas_groups`, 2 seeds."""
    return [Arm(f"{g}-s{s}", g, ov, s, run=f"{g}-s{s}") for s in (0, 1) for g, ov in tcas_groups(lay, s).items()]


def second_k(k: int) -> int:
    """tcas-vs-probe's second pixel K: 50 beside a main K other than 50 (mnist5k: 200 and 50), else 200."""
    return 200 if k == 50 else 50


def tcas_groups(lay: Layout, seed: int) -> dict[str, tuple[str, ...]]:
    """tcas-vs-probe's tokenizers for one seed at the main K (MAE and K-MIM PIXEL first: two feature tokenizers read
    their runs)."""
    k, k2 = lay.k, second_k(lay.k)
    mae, pix = lay.runs / f"mae-normpix-s{seed}", lay.runs / f"pixels-k{k}-s{seed}"
    return {
        "mae-normpix": ("train.target=pixels", "train.norm_pix=true"),
        f"pixels-k{k}": tok("kmeans-pixels", k),
        f"pixels-k{k2}": tok("kmeans-pixels", k2),
        f"pixels-norm-k{k}": tok("kmeans-pixels", k, "tokenizer.patch_norm=true"),
        f"hog-k{k}": tok("kmeans-hog", k),
        f"vq-k{k}": tok("vq", k),
        f"supervised-features-k{k}": tok("kmeans-features", k, "tokenizer.encoder=supervised"),
        f"mae-features-k{k}": (*tok("kmeans-features", k), f"tokenizer.encoder={mae}"),
        f"kmim-features-k{k}": (*tok("kmeans-features", k), f"tokenizer.encoder={pix}"),
        f"cross-class-k{k}": tok("cross-class", k),
        f"class-wise-k{k}": tok("class-wise", k),
    }


def _tcas_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per tokenizer (group) with a TCAS: the means over its seeds, `sd_<metric>` their spread, `n` seeds."""
    rows = []
    for g, recs in groups(r for r in records if r["tcas"] is not None).items():
        row: dict[str, Any] = {"arm": g, "n": len(recs)}
        for key in ("tcas", "nmi", *(k for k, _ in METRICS)):
            row[key], row[f"sd_{key}"] = mean_sd([r[key] for r in recs])
        rows.append(row)
    return rows


def _rho_per_seed(records: list[dict[str, Any]], key: str) -> str:
    by_seed = groups((r for r in records if r["tcas"] is not None), by="seed")
    if len(by_seed) < 2:
        return ""
    parts = [f"seed {s} {spearman([r['tcas'] for r in v], [r[key] for r in v]):+.2f}" for s, v in by_seed.items()]
    return f" Per seed: {', '.join(parts)}."


LABELLED = ("supervised-features-", "cross-class-", "class-wise-")  # tokenizers fitted with the labels


def unsupervised_rule(records: list[dict[str, Any]]) -> list[str]:
    """The second tcas-vs-probe rule (declared 2026-12-07 before the Imagenette-64 round ran, issue 27): the same
    Spearman test over the tokenizers fitted without labels alone (pixels, patch-normalised pixels, HOG, VQ, K-means
    on the round's MAE and K-MIM features), so the label-fitted oracles cannot carry the correlation alone."""
    rows = [r for r in _tcas_rows(records) if not r["arm"].startswith(LABELLED)]
    if len(rows) < 3:
        return []
    t = [r["tcas"] for r in rows]
    out = []
    for key, label in METRICS:
        acc = [r[key] for r in rows]
        rho, (lo, hi) = spearman(t, acc), bootstrap_ci(t, acc, spearman)
        word = "agree" if hi < 0 else "disagree" if lo > 0 else "not resolved"
        out.append(
            f"{label}, unsupervised tokenizers alone ({len(rows)}): Spearman(TCAS, top-1) = {rho:+.2f} "
            f"[95% CI {lo:+.2f}, {hi:+.2f}]: **{word}** with the paper."
        )
    return out


def tcas_rules(records: list[dict[str, Any]]) -> list[str]:
    rows = _tcas_rows(records)
    t, n = [r["tcas"] for r in rows], [r["nmi"] for r in rows]
    seeds = max(r["n"] for r in rows)
    out = []
    for key, label in METRICS:
        acc = [r[key] for r in rows]
        rho, (lo, hi) = spearman(t, acc), bootstrap_ci(t, acc, spearman)
        word = "agree" if hi < 0 else "disagree" if lo > 0 else "not resolved"
        rho_nmi = spearman(n, acc)
        better = "better" if abs(rho) > abs(rho_nmi) else "not better"
        out.append(
            f"{label}: Spearman(TCAS, top-1) = {rho:+.2f} [95% CI {lo:+.2f}, {hi:+.2f}], Pearson "
            f"{pearson(t, acc):+.2f} over {len(rows)} tokenizers: **{word}** with the paper; TCAS predicts "
            f"{better} than NMI (Spearman(NMI, top-1) = {rho_nmi:+.2f}).{_rho_per_seed(records, key)}"
        )
    out.extend(unsupervised_rule(records))
    if seeds < 2:
        return [*out, f"Noise: {noise(records)}; one seed per tokenizer."]
    spread = ", ".join(f"{label} {np.mean([r[f'sd_{key}'] for r in rows]):.1f}" for key, label in METRICS)
    return [*out, f"Noise: {noise(records)}; {seeds} seeds per tokenizer, mean seed sd {spread} pt."]


def tcas_tables(records: list[dict[str, Any]], out: Path) -> list[str]:
    lines = [
        "## Tokenizers (mean ± sd over seeds; TCAS and inertia per seed in results.csv)",
        "",
        "| tokenizer | seeds | TCAS | NMI | kNN | linear probe | low-shot |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    by = groups(records)
    for g, recs in sorted(by.items(), key=lambda kv: (kv[1][0]["tcas"] is None, kv[1][0]["tcas"] or 0)):
        cells = [cell([r[k] for r in recs], ".4f") for k in ("tcas", "nmi")]
        cells += [cell([r[k] for r in recs], ".1f") for k, _ in METRICS]
        lines.append(f"| {g} | {len(recs)} | {' | '.join(cells)} |")
    _scatter(_tcas_rows(records), out / "tcas-vs-accuracy.png")
    return [*lines, "", "![TCAS vs accuracy](tcas-vs-accuracy.png)"]


def _scatter(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, (key, label) in zip(axes, METRICS, strict=True):
        ax.errorbar(
            [r["tcas"] for r in rows], [r[key] for r in rows], yerr=[r[f"sd_{key}"] for r in rows], fmt="o", capsize=3
        )
        for r in rows:
            ax.annotate(r["arm"], (r["tcas"], r[key]), fontsize=7)
        ax.set_xlabel("TCAS (lower = tokens more class-specific)")
        ax.set_ylabel(f"{label} top-1 %")
    save(fig, path)
