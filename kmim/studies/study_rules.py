"""The studies' verdict rules and tables, written before any study ran. Each rule states its test in its text.

* tcas-vs-probe: Spearman rho(TCAS, accuracy) over tokenizers with a 95 % bootstrap interval: "agree" (lower TCAS,
  higher accuracy) when the interval lies below 0, "disagree" when above 0, "not resolved" otherwise; TCAS is said to
  predict better than NMI when |rho(TCAS)| > |rho(NMI)| (no significance claimed). With several seeds per tokenizer
  (the 40-epoch round; added 2026-12-01 before any of its arms ran) each tokenizer is one point: the means over its
  seeds of TCAS, NMI and accuracy; the bootstrap resamples tokenizers; rho is also given per seed, and the seed
  spread as the mean over tokenizers of the accuracy sd.
* k-ablation: the K with the best mean over seeds; "agree" (best at K = 50) when it is 50 and its lead over the
  runner-up exceeds the larger seed std of the two; "disagree" when another K leads K = 50 by more than that;
  "not resolved" otherwise.
* vs-mae: K-MIM PIXEL minus MAE norm-pix, mean over seeds; "agree" when the gap exceeds 2 standard errors
  sqrt(sd1^2/n1 + sd2^2/n2), "disagree" when below -2 SE, "not resolved" otherwise; the first saved epoch at
  which K-MIM's mean kNN (and mean probe, at the probed epochs) reaches MAE's final mean; fine-tuning (seed 0
  only): the same words with 2 binomial SEs of the difference, sqrt(se1^2 + se2^2) (test-set noise only).
* online-vs-offline: kmim/studies/online.py (its second design, issue 28).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from kmim.metrics.stats import binomial_se, bootstrap_ci, pearson, spearman
from kmim.studies import online

METRICS = (("knn_top1", "kNN"), ("linear_probe_top1", "linear probe"), ("lowshot_top1", "low-shot (10/class)"))


def _by_group(records: list[dict[str, Any]], key: str) -> dict[str, list[float]]:
    return {g: [r[key] for r in recs] for g, recs in _groups(records).items()}


def _mean_sd(v: list[float]) -> tuple[float, float]:
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def _noise(records: list[dict[str, Any]]) -> str:
    n = records[0]["n_test"]
    return f"one binomial SE of a top-1 near 80 % on {n} test images is {binomial_se(80.0, n):.1f} pt"


# ---- tcas-vs-probe ------------------------------------------------------------------------------------------------


def _tcas_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per tokenizer (group) with a TCAS: the means over its seeds, `sd_<metric>` their spread, `n` seeds."""
    rows = []
    for g, recs in _groups(r for r in records if r["tcas"] is not None).items():
        row: dict[str, Any] = {"arm": g, "n": len(recs)}
        for key in ("tcas", "nmi", *(k for k, _ in METRICS)):
            row[key], row[f"sd_{key}"] = _mean_sd([r[key] for r in recs])
        rows.append(row)
    return rows


def _groups(records: Iterable[dict[str, Any]], by: str = "group") -> dict[Any, list[dict[str, Any]]]:
    """Records by the value of their field `by`, in first-seen order."""
    out: dict[Any, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(r.get(by), []).append(r)
    return out


def _rho_per_seed(records: list[dict[str, Any]], key: str) -> str:
    by_seed = _groups((r for r in records if r["tcas"] is not None), by="seed")
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
        return [*out, f"Noise: {_noise(records)}; one seed per tokenizer."]
    spread = ", ".join(f"{label} {np.mean([r[f'sd_{key}'] for r in rows]):.1f}" for key, label in METRICS)
    return [*out, f"Noise: {_noise(records)}; {seeds} seeds per tokenizer, mean seed sd {spread} pt."]


def tcas_tables(records: list[dict[str, Any]], out: Path) -> list[str]:
    lines = [
        "## Tokenizers (mean ± sd over seeds; TCAS and inertia per seed in results.csv)",
        "",
        "| tokenizer | seeds | TCAS | NMI | kNN | linear probe | low-shot |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    groups = _groups(records)
    for g, recs in sorted(groups.items(), key=lambda kv: (kv[1][0]["tcas"] is None, kv[1][0]["tcas"] or 0)):
        cells = [_cell([r[k] for r in recs], ".4f") for k in ("tcas", "nmi")]
        cells += [_cell([r[k] for r in recs], ".1f") for k, _ in METRICS]
        lines.append(f"| {g} | {len(recs)} | {' | '.join(cells)} |")
    _scatter(_tcas_rows(records), out / "tcas-vs-accuracy.png")
    return [*lines, "", "![TCAS vs accuracy](tcas-vs-accuracy.png)"]


def _cell(values: list[Any], fmt: str) -> str:
    if any(v is None for v in values):
        return "–"
    m, sd = _mean_sd(values)
    return f"{m:{fmt}}" if len(values) < 2 else f"{m:{fmt}} ± {sd:{fmt}}"


def _scatter(rows: list[dict[str, Any]], path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, (key, label) in zip(axes, METRICS, strict=True):
        ax.errorbar(
            [r["tcas"] for r in rows], [r[key] for r in rows], yerr=[r[f"sd_{key}"] for r in rows], fmt="o", capsize=3
        )
        for r in rows:
            ax.annotate(r["arm"], (r["tcas"], r[key]), fontsize=7)
        ax.set_xlabel("TCAS (lower = tokens more class-specific)")
        ax.set_ylabel(f"{label} top-1 %")
    _save(fig, path)


# ---- k-ablation ---------------------------------------------------------------------------------------------------


def _k_summary(records: list[dict[str, Any]], key: str) -> dict[int, tuple[float, float]]:
    by = _by_group(records, key)
    return {int(g.split("=")[1]): _mean_sd(v) for g, v in by.items()}


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
    return [*out, f"Noise: {_noise(records)}; 2 seeds per K (± is their sd)."]


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
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, label in METRICS:
        ks = sorted(sums[m])
        ax.errorbar(ks, [sums[m][k][0] for k in ks], yerr=[sums[m][k][1] for k in ks], label=label, marker="o")
    ax.set_xscale("log")
    ax.set_xlabel("K (pixel K-means)")
    ax.set_ylabel("top-1 %")
    ax.legend()
    _save(fig, out / "k-ablation.png")
    return [*lines, "", "![K ablation](k-ablation.png)"]


# ---- vs-mae -------------------------------------------------------------------------------------------------------


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
        a, b = _by_group(records, key)[kmim], _by_group(records, key)["mae-normpix"]
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
    return [*out, f"Noise: {_noise(records)}."]


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
        cells = [_mean_sd(_by_group(records, m)[g]) for m, _ in METRICS]
        ft_cell = (
            "–"
            if g not in ft
            else (f"{ft[g][0]:.1f} (seed 0)" if len(ft[g]) == 1 else "{:.1f} ± {:.1f}".format(*_mean_sd(ft[g])))
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
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in zip(axes, ("curve", "probe_curve"), ("kNN", "linear probe"), strict=True):
        for g, pts in _mean_curves(records, key).items():
            ax.plot([e for e, _ in pts], [v for _, v in pts], marker="o", label=g)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{label} top-1 % (mean over seeds)")
    axes[0].legend()
    _save(fig, out / "accuracy-vs-epochs.png")
    return [*lines, "", "![accuracy vs epochs](accuracy-vs-epochs.png)"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    from kmim.runinfo import atomic_write

    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    _pyplot().close(fig)


# ---- finetune-recipe ----------------------------------------------------------------------------------------------


def recipe_rules(records: list[dict[str, Any]]) -> list[str]:
    """The candidate with the best held-out top-1 wins (ties: the first listed); the test split is never read."""
    best = max(records, key=lambda r: r["held_out_top1"])  # max keeps the first of equal values
    return [
        f"Chosen recipe: **{best['arm']}** (held-out top-1 {best['held_out_top1']:.1f} on a random-init "
        f"encoder): {' '.join(best['overrides'])}. Put these in the preset's finetune section before vs-mae "
        "fine-tunes any pretrained encoder."
    ]


def recipe_tables(records: list[dict[str, Any]], out: Path) -> list[str]:
    lines = [
        "## Candidates (random-init encoder, 90 % of train; top-1 on the held-out 10 %)",
        "",
        "| candidate | overrides | held-out top-1 (last) | best epoch's |",
        "|---|---|---:|---:|",
    ]
    for r in records:
        lines.append(
            f"| {r['arm']} | `{' '.join(r['overrides'])}` | {r['held_out_top1']:.1f} | {r['held_out_best_top1']:.1f} |"
        )
    return lines


RULES: dict[str, Callable[[list[dict[str, Any]]], list[str]]] = {
    "tcas-vs-probe": tcas_rules,
    "k-ablation": k_rules,
    "vs-mae": vs_mae_rules,
    "finetune-recipe": recipe_rules,
    "online-vs-offline": online.rules,
}
TABLES: dict[str, Callable[[list[dict[str, Any]], Path], list[str]]] = {
    "tcas-vs-probe": tcas_tables,
    "k-ablation": k_tables,
    "vs-mae": vs_mae_tables,
    "finetune-recipe": recipe_tables,
    "online-vs-offline": online.tables,
}
