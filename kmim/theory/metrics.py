"""Graph quantities of a tokenized mask graph: labeling error, class connectivity, spectral tail and the bounds.

Every function is pure: it takes the tokenized mask graph Mt (N1, S) (or eigenvalues) and the classes y1 (N1,) of the
unmasked views, and returns numbers. Mt sums to 1; M(c, S) = sum over x1 of class c of Mt(x1, S).
"""

from __future__ import annotations

from typing import cast

import numpy as np
import scipy.sparse as sp

from kmim.errors import KmimError
from kmim.theory.graph import Spectrum, factor_spectrum

HAOCHEN_C1, HAOCHEN_C2 = 4.0, 8.0  # HaoChen et al. 2021, Thm 3.8: E <= 4 alpha / lambda_{k+1}(L) + 8 alpha


def class_token_mass(mt: sp.csr_matrix, y1: np.ndarray) -> np.ndarray:
    """M(c, S) (C, S) = sum_{x1 : y(x1) = c} Mt(x1, S), with C = max(y1) + 1."""
    y1 = np.asarray(y1)
    if y1.shape != (mt.shape[0],) or y1.min() < 0:
        raise KmimError(f"labels y1 have shape {y1.shape}: give one class id >= 0 per unmasked view ({mt.shape[0]},)")
    onehot = sp.csr_matrix((np.ones(len(y1)), (y1, np.arange(len(y1)))), shape=(int(y1.max()) + 1, len(y1)))
    return np.asarray((onehot @ mt).todense())  # (C, S)


def labeling_error(mt: sp.csr_matrix, y1: np.ndarray) -> float:
    """alpha = sum_S M(S) P_{x1 ~ M(.|S)}[y(x1) != y*(S)] = 1 - sum_S max_c M(c, S).

    The token S plays the natural image and x1 ~ M(. | S) its augmentation (Zhang et al. 2022; HaoChen et al. 2021);
    y*(S) is the majority class of the token, the labelling of tokens with the smallest error.
    """
    return max(0.0, float(1.0 - class_token_mass(mt, y1).max(axis=0).sum()))


def class_connectivity(mt: sp.csr_matrix, y1: np.ndarray) -> np.ndarray:
    """W (C, C): W[c, c'] = sum_{x1 in c, x1' in c'} A(x1, x1') = sum_S M(c, S) M(c', S) / M(S).

    W sums to 1; W[c, c] is the intra-class and W[c, c'] (c != c') the inter-class mass of the augmentation graph.
    """
    mc = class_token_mass(mt, y1)  # (C, S)
    return cast(np.ndarray, (mc / mc.sum(axis=0, keepdims=True)) @ mc.T)


def pair_labeling_error(mt: sp.csr_matrix, y1: np.ndarray) -> float:
    """alpha_pair = P[y(x1) != y(x1')] for a positive pair (x1, x1') ~ A = 1 - trace(W), the inter-class mass of A."""
    return max(0.0, float(1.0 - np.trace(class_connectivity(mt, y1))))


def intra_class_gap(mt: sp.csr_matrix, y1: np.ndarray, c: int) -> float:
    """1 - lambda_2 of the normalized augmentation graph restricted to the unmasked views of class c.

    Restricting A to class c gives A_c = Mt_c diag(1/M(S)) Mt_c^T with degrees d_c(x1) = sum_S Mt(x1,S) M(c,S)/M(S);
    the gap is 0 when the class falls apart into several components and 1 for a class that is a uniform clique.
    """
    rows = np.flatnonzero(np.asarray(y1) == c)
    if len(rows) < 2:
        return 1.0
    mtc = mt[rows]  # (Nc, S)
    ms = np.asarray(mt.sum(axis=0)).ravel()  # (S,)
    mcs = np.asarray(mtc.sum(axis=0)).ravel()  # (S,)
    d = mtc @ (mcs / ms)  # (Nc,)
    b = sp.diags(1.0 / np.sqrt(d)) @ mtc @ sp.diags(1.0 / np.sqrt(ms))  # (Nc, S)
    lam = factor_spectrum(sp.csr_matrix(b), top=2).top
    return float(max(0.0, 1.0 - lam[1]))


def mean_intra_class_gap(mt: sp.csr_matrix, y1: np.ndarray) -> float:
    """Mean over classes of `intra_class_gap`: how well each class is connected inside itself (1 best, 0 split)."""
    return float(np.mean([intra_class_gap(mt, y1, c) for c in np.unique(y1)]))


def spectral_tail(spec: Spectrum, k: int) -> float:
    """sum_{i > k} lambda_i^2 = ||Abar||_F^2 - sum_{i <= k} lambda_i^2, eigenvalues of Abar sorted largest first.

    Equals min over F (N1, k) of ||Abar - F F^T||_F^2 for PSD Abar, the residual of the best k-dim spectral embedding.
    """
    if not 1 <= k <= spec.n or len(spec.top) < min(k, spec.n):
        raise KmimError(f"k={k} needs 1 <= k <= N1={spec.n} and at least k computed eigenvalues: lower --k")
    return float(max(0.0, spec.frob_sq - np.sum(spec.top[:k] ** 2)))


def eigenvalue(spec: Spectrum, i: int) -> float:
    """lambda_i of Abar (1-based, largest first); 0 beyond the computed ones of a complete spectrum."""
    if i <= len(spec.top):
        return float(spec.top[i - 1])
    if spec.complete:
        return 0.0
    raise KmimError(f"eigenvalue {i} was not computed: ask for more eigenvalues (top >= {i})")


def bound_zhang(tail: float, alpha: float, c1: float = 1.0, *, c2: float = 1.0) -> float:
    """Zhang et al. 2022 form of the downstream error bound:  E <= c1 sum_{i > k} lambda_i^2 + c2 alpha."""
    return c1 * tail + c2 * alpha


def bound_haochen(alpha: float, lam_k1: float) -> float:
    """HaoChen et al. 2021 form:  E <= 4 alpha / (1 - lambda_{k+1}) + 8 alpha.

    1 - lambda_{k+1}(Abar) is the (k+1)-th smallest eigenvalue of the normalized Laplacian I - Abar. When that gap is
    0 (more than k connected components) the bound is infinite: it gives no guarantee.
    """
    gap = 1.0 - lam_k1
    return float("inf") if gap <= 1e-12 else HAOCHEN_C1 * alpha / gap + HAOCHEN_C2 * alpha
