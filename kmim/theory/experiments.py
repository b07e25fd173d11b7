"""The numerical studies of `kmim theory`: tokenizer tables, merge invariance, the mixing sweep, the empirical graph."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from kmim.theory import population as P
from kmim.theory.analysis import BoundConfig, TokenizerReport, analyze
from kmim.theory.empirical import EmpiricalGraph, bag_of_tokens_graph
from kmim.theory.graph import augmentation_graph, tokenized_mask_graph

MERGE_MAX_VIEWS = 256  # images per class in the merge study (its exchangeable mask graph has V^2 entries per class)


@dataclass(frozen=True)
class SyntheticSpec:
    """Population and tokenizer sizes shared by the synthetic studies."""

    views_per_class: int = 64  # images (unmasked views) per class, V
    window: int = 4  # masks of image i hide parts i .. i+w-1 of its pools
    overlap: float = 0.1  # probability that a mask hides a shared background part
    tokens_per_class: int = 8  # arcs per class for class-wise-l, tokens l for cross-class-l, mixing granularity
    kmeans_k: int = 16  # K of the K-means tokenizers on synthetic patch features
    seed: int = 0


@dataclass(frozen=True)
class Case:
    """One population (or data set) and the report of every tokenizer on it."""

    name: str
    params: dict[str, Any]
    sets: dict[str, int]
    k: int
    reports: list[TokenizerReport] = field(default_factory=list)

    def get(self, name: str) -> TokenizerReport:
        return next(r for r in self.reports if r.name == name)


def set_sizes(m: sp.csr_matrix, y1: np.ndarray) -> dict[str, int]:
    """Number of masked views (with mass) only reachable from class c, and reachable from two or more classes."""
    reached = np.asarray(m.sum(axis=0)).ravel() > 0
    sets = P.masked_view_sets(m, y1)[reached]
    out = {f"only class {c}": int(np.sum(sets == c)) for c in np.unique(y1)}
    out["shared (intersection)"] = int(np.sum(sets == P.SHARED))
    return out


def synthetic_tokenizers(pop: P.Population, spec: SyntheticSpec) -> dict[str, np.ndarray]:
    """Named token assignments (N2,) compared in the synthetic tables."""
    n_tok, k = spec.tokens_per_class, spec.kmeans_k
    return {
        "identity": P.identity_tokens(pop),
        "class-wise": P.class_wise_tokens(pop, 1),
        f"class-wise-{n_tok}": P.class_wise_tokens(pop, n_tok),
        "cross-class-1": P.cross_class_tokens(pop, 1),
        f"cross-class-{n_tok}": P.cross_class_tokens(pop, n_tok),
        f"kmeans-{k} (sep 3)": P.kmeans_tokens(P.patch_features(pop, 3.0, 0.1, seed=spec.seed), k, spec.seed),
        f"kmeans-{k} (sep 0.1)": P.kmeans_tokens(P.patch_features(pop, 0.1, 0.1, seed=spec.seed), k, spec.seed),
    }


def toy_case() -> Case:
    """The toy example of paper-notes section 7.3: 2 classes, a ring of 4 views each (window 2), no overlap, k = 2."""
    pop = P.mask_population(2, 4, 2, overlap=0.0)
    bound = BoundConfig(k=2)
    case = Case("toy (paper-notes 7.3)", dict(pop.params), set_sizes(pop.m, pop.y1), bound.k)
    for name, tokens in (
        ("identity", P.identity_tokens(pop)),
        ("class-wise", P.class_wise_tokens(pop, 1)),
        ("cross-class-4", P.cross_class_tokens(pop, 4)),
    ):
        case.reports.append(analyze(name, pop.m, pop.y1, tokens=tokens, cfg=bound))
    return case


def synthetic_case(name: str, classes: int, spec: SyntheticSpec, *, bound: BoundConfig) -> Case:
    """Every synthetic tokenizer on the population with `classes` classes."""
    pop = P.mask_population(classes, spec.views_per_class, spec.window, overlap=spec.overlap)
    case = Case(name, dict(pop.params), set_sizes(pop.m, pop.y1), bound.k)
    for tok_name, tokens in synthetic_tokenizers(pop, spec).items():
        case.reports.append(analyze(tok_name, pop.m, pop.y1, tokens=tokens, cfg=bound))
    return case


def ordering(case: Case, cross: str) -> dict[str, str | float | bool | None]:
    """Does class-wise < identity < cross-class hold, per bound form, and for which Zhang constants c2/c1?

    identity < cross under c1 tail + c2 alpha  <=>  c2/c1 > (tail_id - tail_x) / (alpha_x - alpha_id) when
    alpha_x > alpha_id; `c2_over_c1_min` is that threshold (0 when it holds for every ratio).
    """
    cw, idt, x = case.get("class-wise"), case.get("identity"), case.get(cross)
    d_tail, d_alpha = idt.tail - x.tail, x.alpha - idt.alpha
    thr = max(0.0, d_tail / d_alpha) if d_alpha > 0 else None
    return {
        "cross_class": cross,
        "zhang_holds": bool(cw.bound < idt.bound < x.bound),
        "haochen_holds": bool(cw.bound_haochen < idt.bound_haochen < x.bound_haochen),
        "c2_over_c1_min": thr,
    }


def robustness_study(
    spec: SyntheticSpec,
    bound: BoundConfig,
    windows: tuple[int, ...] = (2, 4, 16),
    *,
    overlaps: tuple[float, ...] = (0.05, 0.1, 0.3),
) -> list[dict[str, Any]]:
    """The ordering check of `ordering` on two-class populations over a grid of mask windows and overlaps."""
    cross, rows = f"cross-class-{spec.tokens_per_class}", []
    for w in windows:
        for ov in overlaps:
            pop = P.mask_population(2, spec.views_per_class, min(w, spec.views_per_class), overlap=ov)
            case = Case("grid", dict(pop.params), {}, bound.k)
            for name, tokens in (
                ("identity", P.identity_tokens(pop)),
                ("class-wise", P.class_wise_tokens(pop, 1)),
                (cross, P.cross_class_tokens(pop, spec.tokens_per_class)),
            ):
                case.reports.append(analyze(name, pop.m, pop.y1, tokens=tokens, cfg=bound))
            row = {"window": pop.params["window"], "overlap": ov}
            for r in case.reports:
                row[f"{r.name} bound"], row[f"{r.name} bound_haochen"] = r.bound, r.bound_haochen
            rows.append(row | ordering(case, cross))
    return rows


def merge_study(classes: int, spec: SyntheticSpec, bound: BoundConfig) -> dict[str, dict[str, Any]]:
    """Cross-class tokenizers with l tokens of identical set ratios, for l = 1, 2, 4, ... up to V, on an exchangeable
    population (window = V) and on the local one (window = spec.window).

    The rebuttal (A5) says merging equivalence classes with identical ratios leaves the bound unchanged. Merging S_i
    and S_j leaves A unchanged exactly when the columns Mt(., S_i) and Mt(., S_j) are proportional; identical set
    ratios give proportional columns when the masks are exchangeable inside each set, not in general. The
    exchangeable mask graph is dense, so the study uses at most MERGE_MAX_VIEWS images per class.
    """
    v = min(spec.views_per_class, MERGE_MAX_VIEWS)
    ls = [2**e for e in range(int(np.log2(v)) + 1) if v % 2**e == 0]
    out = {}
    for label, window in (("exchangeable", v), ("local", spec.window)):
        pop = P.mask_population(classes, v, window, overlap=spec.overlap)
        reps = [analyze(f"cross-class-{n}", pop.m, pop.y1, tokens=P.cross_class_tokens(pop, n), cfg=bound) for n in ls]
        a_one = augmentation_graph(tokenized_mask_graph(pop.m, P.cross_class_tokens(pop, 1)))
        a_max = augmentation_graph(tokenized_mask_graph(pop.m, P.cross_class_tokens(pop, ls[-1])))
        out[label] = {
            "views_per_class": v,
            "window": window,
            "l": ls,
            "alpha": [r.alpha for r in reps],
            "tail": [r.tail for r in reps],
            "bound": [r.bound for r in reps],
            "bound_haochen": [r.bound_haochen for r in reps],
            "max_abs_dA": float(abs(a_one - a_max).max()),
            "identity_bound": analyze("identity", pop.m, pop.y1, tokens=P.identity_tokens(pop), cfg=bound).bound,
            "class_wise_bound": analyze(
                "class-wise", pop.m, pop.y1, tokens=P.class_wise_tokens(pop, 1), cfg=bound
            ).bound,
        }
    return out


def mixing_study(classes: int, spec: SyntheticSpec, bound: BoundConfig) -> dict[str, Any]:
    """From class-wise-l (fraction 0) to cross-class-l (fraction 1) by merging a growing random subset of the l arcs
    across classes; the subsets are nested because they are prefixes of one seeded permutation."""
    pop = P.mask_population(classes, spec.views_per_class, spec.window, overlap=spec.overlap)
    n_tok = spec.tokens_per_class
    fractions = [i / n_tok for i in range(n_tok + 1)]
    reps = [
        analyze(f"mix {f:.3f}", pop.m, pop.y1, tokens=P.mixed_tokens(pop, n_tok, f, seed=spec.seed), cfg=bound)
        for f in fractions
    ]
    return {
        "tokens_per_class": n_tok,
        "fraction": fractions,
        "alpha": [r.alpha for r in reps],
        "alpha_pair": [r.alpha_pair for r in reps],
        "tail": [r.tail for r in reps],
        "bound": [r.bound for r in reps],
        "bound_haochen": [r.bound_haochen for r in reps],
    }


def empirical_case(graph: EmpiricalGraph, bound: BoundConfig, ink_only: bool) -> Case:
    """Every tokenizer of the empirical graph; with `ink_only` only patches with ink can be masked."""
    keep = graph.ink if ink_only else None
    name = "empirical (ink patches)" if ink_only else "empirical (all patches)"
    params = {"images": len(graph.labels), "patches_per_image": graph.ink.shape[1], "ink_only": ink_only}
    ident = bag_of_tokens_graph(graph.patch_tokens["identity"], keep)  # (n, distinct patches)
    case = Case(name, params, set_sizes(ident, graph.labels), bound.k)
    for tok_name, pt in graph.patch_tokens.items():
        mt = bag_of_tokens_graph(pt, keep)  # (n, S)
        case.reports.append(analyze(tok_name, mt, graph.labels, tokens=np.arange(mt.shape[1]), cfg=bound))
    return case
