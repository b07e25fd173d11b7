"""Mask graph -> tokenized mask graph -> augmentation graph on unmasked views, and its normalized spectrum.

Notation (docs/theory.md): M is the joint law of (unmasked view x1, masked view x2), an (N1, N2) non-negative matrix
summing to 1. A tokenizer is an equivalence relation on masked views, given as an integer id per x2. Merging each
class S of the relation gives the tokenized mask graph Mt = M T (T the (N2, S) one-hot token matrix), and the
augmentation graph on unmasked views is

    A_t = Mt diag(1 / M(S)) Mt^T,     M(S) = column sums of Mt.

Its normalized adjacency factorizes as  Abar = D^-1/2 A_t D^-1/2 = B B^T  with  B = D^-1/2 Mt diag(M(S))^-1/2  and
D = diag(M(x1)), so Abar is positive semi-definite with eigenvalues in [0, 1]; the spectrum is computed from the
smaller of the two Gram matrices B B^T (N1, N1) and B^T B (S, S), which share their non-zero eigenvalues.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import cast

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import lobpcg

from kmim.errors import KmimError

DENSE_MAX = 2500  # matrices up to this size get a full dense eigendecomposition; larger ones use block LOBPCG


@dataclass(frozen=True)
class Spectrum:
    """Eigenvalues of a symmetric matrix, largest first.

    `top` holds all n eigenvalues when `complete`, else only the largest ones (from LOBPCG). `frob_sq` is the squared
    Frobenius norm, i.e. the sum of all n squared eigenvalues, so tails are exact even when `top` is partial.
    """

    top: np.ndarray  # (m,) descending, m <= n
    frob_sq: float
    n: int
    complete: bool


def as_mask_matrix(m: np.ndarray | sp.spmatrix) -> sp.csr_matrix:
    """Check a mask graph M (N1, N2) and return it as CSR scaled to total mass 1."""
    m = sp.csr_matrix(m, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] == 0 or m.shape[1] == 0:
        raise KmimError(f"mask graph M has shape {m.shape}: it must be a non-empty (N1, N2) matrix")
    if m.nnz and (not np.all(np.isfinite(m.data)) or m.data.min() < 0):
        raise KmimError("mask graph M has negative or non-finite entries: M(x1, x2) must be a joint probability")
    total = m.sum()
    if total <= 0:
        raise KmimError("mask graph M has total mass 0: give at least one (x1, x2) pair a positive weight")
    if np.any(np.asarray(m.sum(axis=1)).ravel() <= 0):
        raise KmimError("mask graph M has an unmasked view x1 with no masked view: drop the empty rows of M")
    return m / total


def check_tokens(tokens: np.ndarray, n2: int) -> np.ndarray:
    """Validate a token assignment (one integer id per masked view) and return it as int64 (N2,)."""
    t = np.asarray(tokens)
    if t.shape != (n2,):
        raise KmimError(f"token assignment has shape {t.shape}: it needs one id per masked view, shape ({n2},)")
    if not np.issubdtype(t.dtype, np.integer):
        raise KmimError(f"token assignment has dtype {t.dtype}: token ids must be integers")
    return t.astype(np.int64)


def token_matrix(tokens: np.ndarray) -> sp.csr_matrix:
    """One-hot T (N2, S) of the equivalence classes of `tokens`, with the S used ids relabelled 0..S-1 in order."""
    _, inv = np.unique(tokens, return_inverse=True)
    n2, s = len(tokens), int(inv.max()) + 1
    return sp.csr_matrix((np.ones(n2), (np.arange(n2), inv)), shape=(n2, s))


def tokenized_mask_graph(m: sp.csr_matrix, tokens: np.ndarray) -> sp.csr_matrix:
    """Mt (N1, S): Mt(x1, S_i) = sum over x2 in S_i of M(x1, x2); tokens that carry no mass are dropped."""
    mt = (m @ token_matrix(check_tokens(tokens, m.shape[1]))).tocsc()  # (N1, S)
    keep = np.flatnonzero(np.asarray(mt.sum(axis=0)).ravel() > 0)
    return mt[:, keep].tocsr()


def augmentation_graph(mt: sp.csr_matrix) -> sp.csr_matrix:
    """A (N1, N1): A(x1, x1') = sum_i Mt(x1, S_i) Mt(x1', S_i) / M(S_i)."""
    ms = np.asarray(mt.sum(axis=0)).ravel()  # (S,)
    return (mt @ sp.diags(1.0 / ms) @ mt.T).tocsr()


def normalized_factor(mt: sp.csr_matrix) -> sp.csr_matrix:
    """B (N1, S) = D^-1/2 Mt diag(M(S))^-1/2, so that the normalized augmentation adjacency is B B^T."""
    d = np.asarray(mt.sum(axis=1)).ravel()  # (N1,) degree of x1 in A equals its mass M(x1)
    ms = np.asarray(mt.sum(axis=0)).ravel()  # (S,)
    return (sp.diags(1.0 / np.sqrt(d)) @ mt @ sp.diags(1.0 / np.sqrt(ms))).tocsr()


def normalized_adjacency(a: np.ndarray | sp.spmatrix) -> sp.csr_matrix:
    """Abar = D^-1/2 A D^-1/2 with D = diag(row sums of A), for any symmetric non-negative A without isolated nodes."""
    a = sp.csr_matrix(a, dtype=np.float64)
    if a.shape[0] != a.shape[1] or abs(a - a.T).sum() > 1e-9 * max(abs(a).sum(), 1.0):
        raise KmimError(f"adjacency of shape {a.shape} is not square and symmetric: pass a symmetric (N, N) matrix")
    d = np.asarray(a.sum(axis=1)).ravel()
    if np.any(d <= 0):
        raise KmimError("adjacency has a node of degree 0: remove isolated nodes before normalizing")
    inv = sp.diags(1.0 / np.sqrt(d))
    return (inv @ a @ inv).tocsr()


def top_eigenvalues(a: sp.csr_matrix, m: int, seed: int = 0) -> np.ndarray:
    """The m largest eigenvalues of a symmetric sparse matrix, largest first, by block LOBPCG.

    A block of m + guard random vectors finds repeated eigenvalues (frequent in these symmetric graphs), which
    single-vector Lanczos (`eigsh`) can miss. Warns when a residual ||A v - lambda v|| stays above 1e-6.
    """
    n = a.shape[0]
    x = np.random.default_rng(seed).standard_normal((n, min(m + 8 + m // 4, n)))  # (n, m + guard)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence is checked below, on the m wanted pairs only
        vals, vecs = lobpcg(a, x, largest=True, maxiter=2000, tol=1e-10)
    order = np.argsort(vals)[::-1][:m]
    vals, vecs = vals[order], vecs[:, order]
    res = float(np.linalg.norm(a @ vecs - vecs * vals, axis=0).max())
    if res > 1e-6:
        warnings.warn(f"LOBPCG stopped with residual {res:.1e}: the top eigenvalues may be inaccurate", stacklevel=2)
    return cast(np.ndarray, vals)


def symmetric_spectrum(a: sp.spmatrix | np.ndarray, top: int | None = None, dense_max: int = DENSE_MAX) -> Spectrum:
    """Eigenvalues of a symmetric matrix, largest first: dense `eigvalsh` up to `dense_max` rows, else LOBPCG.

    With LOBPCG only the `top` largest (algebraic) eigenvalues are computed; `frob_sq` is exact in both cases.
    """
    a = sp.csr_matrix(a, dtype=np.float64)
    n = a.shape[0]
    frob_sq = float(a.multiply(a).sum())
    if n <= dense_max:
        vals = np.linalg.eigvalsh(a.toarray())[::-1]  # (n,)
        return Spectrum(vals.copy(), frob_sq, n, True)
    return Spectrum(top_eigenvalues(a, min(top or 1, n)), frob_sq, n, False)


def factor_spectrum(b: sp.csr_matrix, top: int | None = None, dense_max: int = DENSE_MAX) -> Spectrum:
    """Spectrum of B B^T (N1, N1) via the smaller Gram matrix; zero eigenvalues are padded back up to N1."""
    n1, s = b.shape
    gram = (b.T @ b) if s < n1 else (b @ b.T)  # (min(N1, S), min(N1, S))
    spec = symmetric_spectrum(gram, top=top, dense_max=dense_max)
    vals = np.clip(spec.top, 0.0, None)  # Abar is PSD; clip round-off below 0
    if spec.complete and spec.n < n1:
        vals = np.concatenate([vals, np.zeros(n1 - spec.n)])
    return Spectrum(vals, spec.frob_sq, n1, spec.complete)


def augmentation_spectrum(mt: sp.csr_matrix, top: int | None = None, dense_max: int = DENSE_MAX) -> Spectrum:
    """Eigenvalues of the normalized augmentation adjacency of a tokenized mask graph Mt (N1, S), largest first."""
    return factor_spectrum(normalized_factor(mt), top=top, dense_max=dense_max)
