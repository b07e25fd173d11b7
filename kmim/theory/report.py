"""Text tables, JSON records and plots of the theory studies (all file writes are atomic)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from kmim.runinfo import atomic_write
from kmim.theory.analysis import TokenizerReport
from kmim.theory.experiments import Case

if TYPE_CHECKING:
    from matplotlib.figure import Figure

N_PLOT = 40  # eigenvalues shown per tokenizer in the spectrum panel
COLUMNS = ("tokenizer", "tokens", "alpha", "alpha_pair", "intra_gap", "lam_k1", "tail", "bound", "bound_haochen")


def fmt(x: Any) -> str:
    """Numbers with 4 decimals ('inf' for an infinite bound); everything else as str."""
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, (int, np.integer)):
        return str(x)
    if isinstance(x, (float, np.floating)):
        return "inf" if math.isinf(x) else f"{x:.4f}"
    return str(x)


def markdown(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def case_table(case: Case) -> str:
    """One row per tokenizer with the columns of `COLUMNS` (lam_k1 and tail use the case's k)."""
    names = {"lam_k1": f"lam_{case.k + 1}", "tail": f"tail(k={case.k})", "alpha_pair": "inter (alpha_pair)"}
    header = [names.get(c, c) for c in COLUMNS]
    rows = [[r.row()[c] for c in COLUMNS] for r in case.reports]
    sets = ", ".join(f"{k}: {v}" for k, v in case.sets.items())
    params = ", ".join(f"{k}={v}" for k, v in case.params.items())
    return f"### {case.name}\n{params}\nmasked views per set: {sets}\n\n{markdown(header, rows)}"


def ordering_text(ordering: dict[str, Any], c1: float, c2: float) -> str:
    """One line on whether class-wise < identity < cross-class holds under each bound form."""
    thr = ordering["c2_over_c1_min"]
    need = "never (alpha does not grow)" if thr is None else f"c2/c1 > {thr:.2f}"
    return (
        f"class-wise < identity < {ordering['cross_class']}: Zhang form (c1={c1:g}, c2={c2:g}) "
        f"{'holds' if ordering['zhang_holds'] else 'does not hold'}; HaoChen form "
        f"{'holds' if ordering['haochen_holds'] else 'does not hold'}; Zhang form holds iff {need}"
    )


def merge_table(merge: dict[str, dict[str, Any]]) -> str:
    """Bound of cross-class-l for every l, on the exchangeable and the local population."""
    ls = next(iter(merge.values()))["l"]
    rows = []
    for label, m in merge.items():
        pop = f"{label} (V={m['views_per_class']}, w={m['window']})"
        rows.append([f"{pop} bound", *m["bound"], f"{m['max_abs_dA']:.1e}"])
        rows.append([f"{pop} bound_haochen", *m["bound_haochen"], ""])
    header = ["population", *(f"l={n}" for n in ls), "max abs A(l=1) - A(l=max)"]
    extra = "\n".join(
        f"{label}: identity bound {fmt(m['identity_bound'])}, class-wise bound {fmt(m['class_wise_bound'])}"
        for label, m in merge.items()
    )
    return f"### merge invariance: cross-class-l\n\n{markdown(header, rows)}\n\n{extra}"


def mixing_table(mix: dict[str, Any]) -> str:
    """alpha, tail and both bounds along the class-wise -> cross-class sweep."""
    keys = ("alpha", "tail", "bound", "bound_haochen")
    rows = [[f, *(mix[k][i] for k in keys)] for i, f in enumerate(mix["fraction"])]
    title = f"### mixing sweep: class-wise-{mix['tokens_per_class']} -> cross-class-{mix['tokens_per_class']}"
    return f"{title}\n\n{markdown(['fraction mixed', *keys], rows)}"


def robustness_table(rows: list[dict[str, Any]]) -> str:
    """The ordering check over the (window, overlap) grid."""
    cross = rows[0]["cross_class"]
    cols = ["identity bound", "class-wise bound", f"{cross} bound"]
    hcols = ["identity bound_haochen", "class-wise bound_haochen", f"{cross} bound_haochen"]
    flags = ("zhang_holds", "haochen_holds", "c2_over_c1_min")
    header = ["window", "overlap", *cols, *hcols, "Zhang holds", "HaoChen holds", "Zhang needs c2/c1 >"]
    body = [[r["window"], r["overlap"], *(r[c] for c in cols + hcols), *(r[c] for c in flags)] for r in rows]
    return f"### ordering over populations (two classes)\n\n{markdown(header, body)}"


def jsonable(obj: Any) -> Any:
    """numpy to Python; non-finite floats to None (JSON has no inf: a None bound means infinite)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def report_json(r: TokenizerReport) -> dict[str, Any]:
    """Everything about one tokenizer, with the eigenvalues the bound used (all N1 when `eigenvalues_complete`)."""
    return {
        **{k: v for k, v in r.row().items() if k != "tokenizer"},
        "connectivity": r.connectivity,
        "n_unmasked_views": r.n1,
        "frob_sq": r.frob_sq,
        "eigenvalues_complete": len(r.eigenvalues) == r.n1,
        "eigenvalues": np.round(r.eigenvalues, 12),
    }


def case_json(case: Case, ordering: dict[str, Any] | None = None) -> dict[str, Any]:
    out = {"params": case.params, "sets": case.sets, "k": case.k}
    out["tokenizers"] = {r.name: report_json(r) for r in case.reports}
    if ordering is not None:
        out["ordering"] = ordering
    return out


def save_figure(fig: Figure, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def plot_case(case: Case, path: Path) -> None:
    """Left: the largest eigenvalues of each tokenizer's normalized augmentation graph. Right: both bounds (log)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    for r in case.reports:
        vals = r.eigenvalues[:N_PLOT]
        ax1.plot(np.arange(1, len(vals) + 1), vals, marker=".", label=r.name)
    ax1.axvline(case.k + 0.5, color="gray", ls=":", lw=1)
    ax1.set(xlabel="i", ylabel="lambda_i of normalized A", title=f"{case.name}: spectrum (k={case.k} dotted)")
    ax1.legend(fontsize=7)
    x = np.arange(len(case.reports))
    all_vals = np.array([[r.bound, r.bound_haochen] for r in case.reports])  # (tokenizers, 2)
    shown = all_vals[np.isfinite(all_vals) & (all_vals > 0)]
    floor = shown.min() / 3 if shown.size else 1e-3  # where "0" and "inf" labels sit on the log axis
    for j, (off, label) in enumerate(((-0.2, "Zhang form"), (0.2, "HaoChen form"))):
        vals = all_vals[:, j]
        ax2.bar(x + off, np.where(np.isfinite(vals) & (vals > 0), vals, np.nan), width=0.4, label=label)
        for xi, v in zip(x, vals, strict=True):
            if not np.isfinite(v) or v <= 0:
                ax2.text(xi + off, floor, "inf" if v > 0 else "0", ha="center", va="bottom", fontsize=7)
    ax2.set_yscale("log")
    ax2.set_ylim(bottom=floor / 2)
    ax2.set_xticks(x, [r.name for r in case.reports], rotation=30, ha="right", fontsize=7)
    ax2.set(ylabel="bound (log scale)", title="downstream error bound")
    ax2.legend(fontsize=7)
    save_figure(fig, path)


def plot_mixing(mix: dict[str, Any], merge: dict[str, dict[str, Any]], path: Path) -> None:
    """Left: the mixing sweep. Right: the bound of cross-class-l against l on both populations."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    f = mix["fraction"]
    for key in ("alpha", "tail", "bound", "bound_haochen"):
        ax1.plot(f, mix[key], marker="o", label=key)
    ax1.set_yscale("log")
    ax1.set(xlabel="fraction of arcs merged across classes", title="class-wise -> cross-class (log scale)")
    ax1.legend(fontsize=7)
    for label, m in merge.items():
        ax2.plot(m["l"], m["bound"], marker="o", label=f"{label} (w={m['window']}), Zhang")
        ax2.plot(m["l"], m["bound_haochen"], marker="s", ls="--", label=f"{label} (w={m['window']}), HaoChen")
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set(xlabel="cross-class tokens l (identical set ratios)", ylabel="bound", title="merging equal-ratio tokens")
    ax2.legend(fontsize=7)
    save_figure(fig, path)
