"""A finite synthetic population for the mask graph, and tokenizers on it (equivalence relations on masked views).

Population (docs/theory.md, "The synthetic population"): C classes, V images per class. Image i of class c has one
unmasked view x1[c, i]. A random mask hides

* with probability 1 - overlap, a foreground part e[c, j] of its own class, j uniform in i, i+1, ..., i+w-1 (mod V);
* with probability overlap, a background part b[j] from a pool shared by all classes, j uniform in the same window.

So M(x1[c, i], x2) = P(x2 | image) / (C V). Parts e[c, .] are reached only from class c (the set P_c minus the
others); background parts are reached from every class (the intersection of the P_c), so overlap = 0 leaves the
classes disconnected. Neighbouring images share parts, so inside a class the identity (MAE) graph is a ring of width
w: poorly connected when V >> w. With w = V every image can hide every part of its pools (exchangeable masks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import scipy.sparse as sp
from sklearn.cluster import KMeans

from kmim.errors import KmimError
from kmim.theory.graph import as_mask_matrix

SHARED = -1  # pool id of background (shared) masked views


@dataclass(frozen=True)
class Population:
    """A mask graph with labels: M (N1, N2), the class of each x1, and the pool and ring position of each x2."""

    m: sp.csr_matrix  # (N1, N2) joint law M(x1, x2), sums to 1
    y1: np.ndarray  # (N1,) class of each unmasked view
    pool: np.ndarray  # (N2,) class c of a foreground part e[c, j], or SHARED for a background part b[j]
    pos: np.ndarray  # (N2,) ring position j of the part inside its pool
    n_classes: int
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def views_per_class(self) -> int:
        return int(self.params["views_per_class"])


def _check_params(classes: int, views_per_class: int, window: int, *, overlap: float) -> None:
    if classes < 2:
        raise KmimError(f"--classes={classes}: the population needs at least 2 classes")
    if views_per_class < 2:
        raise KmimError(f"--views-per-class={views_per_class}: use at least 2 images per class")
    if not 1 <= window <= views_per_class:
        raise KmimError(f"--window={window}: the mask window must be between 1 and --views-per-class")
    if not 0.0 <= overlap < 1.0:
        raise KmimError(f"--overlap={overlap}: the background probability must be in [0, 1)")


def mask_population(classes: int, views_per_class: int, window: int, *, overlap: float) -> Population:
    """The population described in the module docstring; background parts exist only when overlap > 0."""
    _check_params(classes, views_per_class, window, overlap=overlap)
    c_n, v, w = classes, views_per_class, window
    n_pools = c_n + (1 if overlap > 0 else 0)  # foreground pools, then the background pool
    img_c, img_i, r = np.meshgrid(np.arange(c_n), np.arange(v), np.arange(w), indexing="ij")  # (C, V, w) each
    row = (img_c * v + img_i).ravel()  # x1 index of the image
    j = ((img_i + r) % v).ravel()  # ring position of the hidden part
    rows, cols, vals = [row], [img_c.ravel() * v + j], [np.full(row.size, (1.0 - overlap) / w)]
    if overlap > 0:
        rows.append(row)
        cols.append(c_n * v + j)
        vals.append(np.full(row.size, overlap / w))
    m = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(c_n * v, n_pools * v)
    )
    pool = np.repeat(np.append(np.arange(c_n), [SHARED] * (n_pools - c_n)).astype(np.int64), v)  # (N2,)
    params = {"classes": c_n, "views_per_class": v, "window": w, "overlap": overlap}
    return Population(
        as_mask_matrix(m), np.repeat(np.arange(c_n), v), pool, np.tile(np.arange(v), n_pools), c_n, params
    )


def masked_view_sets(m: sp.csr_matrix, y1: np.ndarray) -> np.ndarray:
    """Set of each masked view (N2,): c when only class c reaches it (P_c minus the others), SHARED when two or more."""
    reach = sp.csr_matrix((np.ones(len(y1)), (y1, np.arange(len(y1))))) @ (m > 0).astype(np.float64)  # (C, N2)
    reach = np.asarray(reach.todense()) > 0
    return np.where(reach.sum(axis=0) >= 2, SHARED, reach.argmax(axis=0))


def _block(pos: np.ndarray, v: int, blocks: int) -> np.ndarray:
    """Contiguous block of each ring position when the V positions are cut into `blocks` equal arcs."""
    if not 1 <= blocks <= v:
        raise KmimError(f"--tokens-per-class={blocks}: the number of blocks must be between 1 and --views-per-class")
    return pos * blocks // v


def identity_tokens(pop: Population) -> np.ndarray:
    """MAE: every masked view is its own token."""
    return np.arange(len(pop.pool))


def class_wise_tokens(pop: Population, per_class: int = 1) -> np.ndarray:
    """Foreground parts of class c cut into `per_class` arcs, one token per (class, arc); background parts stay as
    their own tokens, since no class-wise rule can give a part of the intersection a single class."""
    blk = _block(pop.pos, pop.views_per_class, per_class)
    fg = pop.pool != SHARED
    return np.where(fg, pop.pool * per_class + blk, pop.n_classes * per_class + np.arange(len(pop.pool)))


def cross_class_tokens(pop: Population, tokens: int = 1) -> np.ndarray:
    """Token g holds arc g of every foreground pool and of the background pool, so every token has the same ratio of
    elements from each set P_c minus the others and from the intersection (the rebuttal's cross-class tokenizer)."""
    return _block(pop.pos, pop.views_per_class, tokens)


def mixed_tokens(pop: Population, per_class: int, fraction: float, *, seed: int = 0) -> np.ndarray:
    """Class-wise with `per_class` arcs, except that a random `fraction` of the arc indices are merged across classes
    (with the background arc of the same index): fraction 0 is `class_wise_tokens`, 1 is `cross_class_tokens`."""
    if not 0.0 <= fraction <= 1.0:
        raise KmimError(f"mixing fraction {fraction} must be in [0, 1]")
    blk = _block(pop.pos, pop.views_per_class, per_class)
    mixed_arcs = np.random.default_rng(seed).permutation(per_class)[: round(fraction * per_class)]
    is_mixed = np.isin(blk, mixed_arcs)
    return np.where(is_mixed, blk, per_class + class_wise_tokens(pop, per_class))


def patch_features(pop: Population, separation: float, noise: float, *, seed: int = 0) -> np.ndarray:
    """Synthetic features (N2, P + 2) of the masked views: separation * one-hot(pool) + its ring angle + noise.

    P = number of pools. Large `separation` makes the pools (classes) far apart, so K-means finds class-wise tokens;
    small `separation` lets K-means cluster by ring position across classes.
    """
    pools = np.unique(pop.pool)
    onehot = (pop.pool[:, None] == pools[None, :]).astype(np.float64)  # (N2, P)
    angle = 2 * np.pi * pop.pos / pop.views_per_class
    ring = np.stack([np.cos(angle), np.sin(angle)], axis=1)  # (N2, 2)
    rng = np.random.default_rng(seed)
    feats = np.concatenate([separation * onehot, ring], axis=1)
    return (feats + noise * rng.standard_normal(feats.shape)).astype(np.float32)


def kmeans_tokens(feats: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Token of each masked view = its K-means cluster on the features (N2, D) (scikit-learn, k-means++ init).

    The synthetic pools hold a few hundred views, too few for faiss's minimum of 39 points per centroid, so the
    project's faiss K-means is used only for the empirical graph.
    """
    if not 1 <= k <= len(feats):
        raise KmimError(f"--kmeans-k={k} must be between 1 and the number of masked views ({len(feats)})")
    return cast(np.ndarray, KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(feats).astype(np.int64))
