"""Token–class metrics: pure functions of the token id of each patch and the class label of its image.

Everything is computed from the co-occurrence matrix N (K, L): n_kl = number of patches of class l whose token is k.
Notation: n_k = sum_l n_kl (uses of token k), n_l = sum_k n_kl (patches of class l), n = sum n_kl,
q_k = n_k. / n_k (the class proportions of token k), pi = (n_l / n)_l (the class prior), p_l(k) = n_kl / n_l.
See docs/tcas.md for the reasoning behind TCAS and measured values.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from kmim.errors import KmimError


def cooccurrence(tokens: Any, labels: Any, k: int | None = None, *, num_classes: int | None = None) -> np.ndarray:
    """N (K, L) int64 with n_kl = #patches of class l with token k.

    tokens (B, P) with labels (B,) — every patch takes its image's label — or tokens (N,) with labels (N,).
    K defaults to max(tokens) + 1 and L to max(labels) + 1.
    """
    t = np.asarray(tokens, dtype=np.int64)
    y = np.asarray(labels, dtype=np.int64)
    if t.ndim == 2 and y.shape == (t.shape[0],):
        y = np.repeat(y, t.shape[1])  # (B * P,)
    t = t.reshape(-1)
    if y.shape != t.shape:
        raise KmimError(f"labels of shape {y.shape} do not match tokens: give one label per image or per patch")
    if t.size == 0:
        raise KmimError("no patches to score: the token array is empty")
    if t.min() < 0 or y.min() < 0:
        raise KmimError("token ids and class labels must be non-negative integers")
    k = int(t.max()) + 1 if k is None else k
    num_classes = int(y.max()) + 1 if num_classes is None else num_classes
    if t.max() >= k or y.max() >= num_classes:
        raise KmimError(f"token id {t.max()} or label {y.max()} is out of range for K={k}, L={num_classes}")
    return np.bincount(t * num_classes + y, minlength=k * num_classes).reshape(k, num_classes)


def _entropy(p: np.ndarray) -> float:
    """H(p) = -sum p log p in nats, over the nonzero entries of a probability vector."""
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _used(counts: np.ndarray) -> np.ndarray:
    """The co-occurrence rows of used tokens and columns of present classes, as float64 (K', L')."""
    n = np.asarray(counts, dtype=np.float64)
    if n.ndim != 2 or n.sum() <= 0 or (n < 0).any():
        raise KmimError("a co-occurrence matrix must be 2-D (tokens x classes) with non-negative counts, not all zero")
    return cast(np.ndarray, n[n.sum(axis=1) > 0][:, n.sum(axis=0) > 0])


def class_connectivity(counts: np.ndarray) -> np.ndarray:
    """W (L', L') over the present classes: W[l, l'] = (1/n) sum_k n_kl n_kl' / n_k.

    W is the class-level mass of the augmentation graph in which two patches are linked when they share a token:
    draw a patch, then a patch uniformly among those with the same token (possibly itself); W[l, l'] is the
    probability that the first is of class l and the second of class l'. W is symmetric and sums to 1.
    """
    n = _used(counts)
    return cast(np.ndarray, (n / n.sum(axis=1, keepdims=True)).T @ n / n.sum())


def tcas_from_counts(counts: np.ndarray) -> float:
    """Token-Class Alignment Similarity (TCAS): mean over ordered class pairs l != l' of the normalized connectivity

        TCAS = 1 / (L (L - 1)) * sum_{l != l'} W[l, l'] / sqrt(W[l, l] W[l', l']),   W = class_connectivity(N).

    It is the inter-class connectivity created by shared tokens relative to the intra-class connectivity. Equally,
    W[l, l'] / sqrt(W[l, l] W[l', l']) is the cosine similarity of the class histograms p_l and p_l' under the
    inner product <a, b> = sum_k a_k b_k / n_k, so a token counts in inverse proportion to how often it is used.

    Properties (tested in tests/test_tcas.py): TCAS lies in [0, 1], lower is better; it is 0 iff no token is shared
    between classes (class-wise tokenizer), and 1 iff every class has the same token histogram, i.e. q_k = pi for
    every token (cross-class or class-independent tokenizer), by Cauchy-Schwarz. It is unchanged by renaming tokens
    and by merging tokens with identical class proportions (each W entry is sum_k n_k q_kl q_kl' / n, linear in n_k).
    A "background" token used by every class in prior proportion adds b * pi_l pi_l' to every W entry (b = its share
    of the patches): it pulls TCAS towards 1 in proportion to b, but only against the intra-class connectivity
    of the informative tokens, so it cannot saturate the score. With uniform pi, background share b and perfectly
    class-specific other tokens, TCAS = b / (b + (1 - b) L).
    Only classes that have patches count; at least two are needed.
    On a finite sample this plug-in value is biased low by about K' L / n (K' used tokens, n patches) even for a
    class-independent tokenizer; `tcas_null` gives that reference for the same token sizes.
    """
    w = class_connectivity(counts)  # (L, L)
    classes = w.shape[0]
    if classes < 2:
        raise KmimError("TCAS needs patches of at least two classes")
    d = np.sqrt(np.diag(w))
    c = w / np.outer(d, d)  # (L, L), ones on the diagonal
    return float(np.clip((c.sum() - np.trace(c)) / (classes * (classes - 1)), 0.0, 1.0))


def tcas_null(counts: np.ndarray) -> float:
    """Expected TCAS of a class-independent tokenizer with the same token sizes n_k and class prior pi on n patches:
    the finite-sample ceiling of `tcas_from_counts` (which is 1 only in the limit n -> infinity).

    If each token's n_k labels were drawn independently from pi, then with K' used tokens
        E[n W[l, l']] = (n - K') pi_l pi_l'  (l != l'),   E[n W[l, l]] = n pi_l^2 + K' pi_l (1 - pi_l),
    and this returns the TCAS of these expected W (a first-order approximation). For uniform pi it is about
    1 - K' L / n: 0.992 for K' = 200, L = 10, n = 256,000, but 0.970 for n = 64,000.
    """
    n = _used(counts)
    total, used = n.sum(), n.shape[0]
    pi = n.sum(axis=0) / total  # (L,)
    if len(pi) < 2:
        raise KmimError("TCAS needs patches of at least two classes")
    off = (total - used) * np.outer(pi, pi)  # (L, L)
    diag = total * pi**2 + used * pi * (1 - pi)  # (L,)
    c = off / np.sqrt(np.outer(diag, diag))
    np.fill_diagonal(c, 0.0)
    return float(c.sum() / (len(pi) * (len(pi) - 1)))


def tcas(tokens: Any, labels: Any) -> float:
    """TCAS of token ids (B, P) with image labels (B,), or (N,) with (N,); see `tcas_from_counts`."""
    return tcas_from_counts(cooccurrence(tokens, labels))


def nmi(counts: np.ndarray) -> float:
    """Normalized mutual information I(T; Y) / ((H(T) + H(Y)) / 2) between token T and class Y (scikit-learn's
    arithmetic normalization); 1 when both are constant."""
    n = _used(counts)
    p = n / n.sum()
    ht, hy = _entropy(p.sum(axis=1)), _entropy(p.sum(axis=0))
    if ht + hy == 0:
        return 1.0
    mi = ht + hy - _entropy(p.reshape(-1))
    return float(np.clip(mi / ((ht + hy) / 2), 0.0, 1.0))


def purity(counts: np.ndarray) -> float:
    """purity = (1/n) sum_k max_l n_kl: accuracy of predicting a patch's class as the majority class of its token."""
    n = _used(counts)
    return float(n.max(axis=1).sum() / n.sum())


def _token_counts(counts: np.ndarray) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    return c.sum(axis=1) if c.ndim == 2 else c


def codebook_usage(counts: np.ndarray, k: int | None = None) -> float:
    """usage = #{k : n_k > 0} / K of a token histogram (K,) or co-occurrence matrix (K, L); K defaults to its length."""
    t = _token_counts(counts)
    return float((t > 0).sum() / (k or len(t)))


def dead_codes(counts: np.ndarray, k: int | None = None) -> int:
    """dead = K - #{k : n_k > 0}: codes no patch uses."""
    t = _token_counts(counts)
    return int((k or len(t)) - (t > 0).sum())


def perplexity(counts: np.ndarray) -> float:
    """perplexity = exp(H(T)), H in nats, of the token distribution n_k / n: the effective number of codes used."""
    t = _token_counts(counts)
    if t.sum() <= 0:
        raise KmimError("perplexity of an empty token histogram is undefined")
    return float(np.exp(_entropy(t / t.sum())))


def token_metrics(tokens: Any, labels: Any, k: int, *, num_classes: int | None = None) -> dict[str, float | int]:
    """All token metrics for token ids (B, P) and image labels (B,) of a codebook of size k."""
    n = cooccurrence(tokens, labels, k, num_classes=num_classes)
    return {
        "tcas": tcas_from_counts(n),
        "tcas_null": tcas_null(n),
        "nmi": nmi(n),
        "purity": purity(n),
        "usage": codebook_usage(n, k),
        "perplexity": perplexity(n),
        "dead_codes": dead_codes(n, k),
        "patches": int(n.sum()),
    }
