"""The vs-mae study's verdict rule and tables, written before any of its arms ran. vs-mae: K-MIM PIXEL minus MAE norm-
pix, mean over seeds; "agree" when the gap exceeds 2 standard errors sqrt(sd1^2/n1 + sd2^2/n2), "disagree" when
below -2 SE, "not resolved" otherwise; the first saved epoch at which K-MIM's mean kNN (and mean probe, at the
probed epochs) reaches MAE's final mean; fine-tuning (seed 0 only): the same words with 2 binomial SEs of the
difference, sqrt(se1^2 + se2^2) (test-set noise only)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from kmim.metrics.stats import binomial_se
from kmim.studies.common import METRICS, Arm, Layout, by_group, mean_sd, noise, pyplot, save, tok

PROBE_AT = (0.3, 0.6)  # the saved epochs nearest these fractions of the budget also get a linear probe
# (the final encoder always does): 6 and 12 of 20 epochs (the first round), 12 and 24 of 40
FINETUNE_SEEDS = (0, 1, 2)  # seeds whose run is also fine-tuned (all, from the 40-epoch round on; the 20-epoch
# round fine-tuned seed 0 only, its records say so)


def arms(lay: Layout) -> list[Arm]:
    """K-MIM PIXEL and HOG at the main K, MAE norm-pix and raw pixels; 3 seeds."""
    k = lay.k
    groups = {
        f"kmim-pixels-k{k}": (tok("kmeans-pixels", k), f"pixels-k{k}"),
        "mae-normpix": (("train.target=pixels", "train.norm_pix=true"), "mae-normpix"),
        "mae-raw": (("train.target=pixels", "train.norm_pix=false"), "mae-raw"),
        f"kmim-hog-k{k}": (tok("kmeans-hog", k), f"hog-k{k}"),
    }
    return [Arm(f"{g}-s{s}", g, ov, s, run=f"{r}-s{s}") for s in (0, 1, 2) for g, (ov, r) in groups.items()]


def _gap_word(gap: float, se: float) -> str:
    """K-MIM − MAE gap against 2 standard errors (NaN SE: not resolved)."""
    return "agree (K-MIM ahead)" if gap > 2 * se else "disagree (MAE ahead)" if gap < -2 * se else "not resolved"


def kmim_group(records: Iterable[dict[str, Any]]) -> str:
    """vs-mae's K-MIM PIXEL group: kmim-pixels-k<K> at the study's main K (200 on mnist5k, 50 on Imagenette)."""
    return next((r["group"] for r in records if r["group"].startswith("kmim-pixels-k")), "kmim-pixels-k200")


def vs_mae_rules(records: list[dict[str, Any]]) -> list[str]:
    out = []
    kmim = kmim_group(records)
    for key, label in METRICS:
        a, b = by_group(records, key)[kmim], by_group(records, key)["mae-normpix"]
        gap = float(np.mean(a) - np.mean(b))
        se = float(np.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b))) if len(a) > 1 else float("nan")
        word = _gap_word(gap, se)
        out.append(f"{label}: K-MIM PIXEL − MAE norm-pix = {gap:+.1f} pt (SE {se:.1f}, {len(a)} seeds): **{word}**.")
    for key, label in (("curve", "kNN"), ("probe_curve", "linear probe")):
        curves = _mean_curves(records, key)
        if "mae-normpix" not in curves or kmim not in curves:
            continue
        target = curves["mae-normpix"][-1][1]
        reach = next((e for e, v in curves[kmim] if v >= target), None)
        out.append(
            f"Epochs for K-MIM's mean {label} to reach MAE's final {target:.1f}: "
            f"{reach if reach is not None else 'not reached in the budget'} (evaluated epochs only)."
        )
    out.extend(_finetune_rule(records))
    return [*out, f"Noise: {noise(records)}."]


def _finetune_values(records: list[dict[str, Any]]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for r in records:
        if r.get("finetune_top1") is not None:
            out.setdefault(r["group"], []).append(r["finetune_top1"])
    return out


def _finetune_rule(records: list[dict[str, Any]]) -> list[str]:
    """One fine-tuned seed per method (the 20-epoch round): the gap against the binomial SE of the difference.
    Several (from the 40-epoch round, declared before it ran): the gap of the means against the SE over seeds,
    as every other metric, or the binomial SE of the difference (every seed reads the same test set) when that is
    larger."""
    ft, kmim = _finetune_values(records), kmim_group(records)
    if kmim not in ft or "mae-normpix" not in ft:
        return []
    a, b = ft[kmim], ft["mae-normpix"]
    n = records[0]["n_test"]
    gap = float(np.mean(a) - np.mean(b))
    binom = float(np.hypot(binomial_se(float(np.mean(a)), n), binomial_se(float(np.mean(b)), n)))  # one test set
    if len(a) == 1 or len(b) == 1:
        return [
            f"Fine-tuning (seed 0): K-MIM PIXEL − MAE norm-pix = {gap:+.1f} pt (binomial SE of the difference "
            f"{binom:.1f}; one seed, so seed noise is not in it): **{_gap_word(gap, binom)}**."
        ]
    seeds = float(np.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b)))
    se = max(seeds, binom)
    return [
        f"Fine-tuning ({len(a)} seeds): K-MIM PIXEL − MAE norm-pix = {gap:+.1f} pt (SE {se:.1f}: over seeds "
        f"{seeds:.1f}, binomial {binom:.1f}): **{_gap_word(gap, se)}**."
    ]


def _mean_curves(records: list[dict[str, Any]], key: str = "curve") -> dict[str, list[tuple[int, float]]]:
    """Per group, [(epoch, mean over seeds)] of the record's `key` points; the final encoder's number (kNN or probe)
    closes each curve at the last epoch when the checkpoints did not reach it."""
    final = {"curve": "knn_top1", "probe_curve": "linear_probe_top1"}[key]
    by: dict[str, dict[int, list[float]]] = {}
    for r in records:
        pts = dict(r.get(key, []))
        if pts or r.get("curve"):
            pts.setdefault(r["config"]["train"]["epochs"], r[final])
        for e, v in pts.items():
            by.setdefault(r["group"], {}).setdefault(int(e), []).append(v)
    return {g: [(e, float(np.mean(v))) for e, v in sorted(d.items())] for g, d in by.items()}


def vs_mae_tables(records: list[dict[str, Any]], out: Path) -> list[str]:
    lines = [
        "## Methods (mean ± sd over seeds; fine-tuning: over the fine-tuned seeds)",
        "",
        "| method | kNN | linear probe | low-shot | fine-tuning |",
        "|---|---:|---:|---:|---:|",
    ]
    ft = _finetune_values(records)
    for g in dict.fromkeys(r["group"] for r in records):
        cells = [mean_sd(by_group(records, m)[g]) for m, _ in METRICS]
        ft_cell = (
            "–"
            if g not in ft
            else (f"{ft[g][0]:.1f} (seed 0)" if len(ft[g]) == 1 else "{:.1f} ± {:.1f}".format(*mean_sd(ft[g])))
        )
        lines.append(f"| {g} | " + " | ".join(f"{m:.1f} ± {s:.1f}" for m, s in cells) + f" | {ft_cell} |")
    probe = _mean_curves(records, "probe_curve")
    if probe:
        epochs = sorted({e for pts in probe.values() for e, _ in pts})
        lines += [
            "",
            "## Linear probe vs epochs (mean over seeds)",
            "",
            "| method | " + " | ".join(f"epoch {e}" for e in epochs) + " |",
            "|---|" + "---:|" * len(epochs),
        ]
        for g, pts in probe.items():
            d = dict(pts)
            lines.append(f"| {g} | " + " | ".join(f"{d[e]:.1f}" if e in d else "–" for e in epochs) + " |")
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in zip(axes, ("curve", "probe_curve"), ("kNN", "linear probe"), strict=True):
        for g, pts in _mean_curves(records, key).items():
            ax.plot([e for e, _ in pts], [v for _, v in pts], marker="o", label=g)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{label} top-1 % (mean over seeds)")
    axes[0].legend()
    save(fig, out / "accuracy-vs-epochs.png")
    return [*lines, "", "![accuracy vs epochs](accuracy-vs-epochs.png)"]
