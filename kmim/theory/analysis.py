"""All graph quantities of one tokenizer on one mask graph, gathered into a record for tables, plots and JSON."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from kmim.theory import metrics
from kmim.theory.graph import augmentation_spectrum, tokenized_mask_graph

N_EIGS = 64  # eigenvalues kept (and plotted) when a spectrum is larger than this


@dataclass(frozen=True)
class BoundConfig:
    """Which k and which constants the bounds use."""

    k: int  # feature dimension: the bound sums lambda_i^2 for i > k
    c1: float = 1.0  # Zhang et al. 2022 constant on the spectral tail
    c2: float = 1.0  # Zhang et al. 2022 constant on the labeling error


@dataclass(frozen=True)
class TokenizerReport:
    """Graph quantities of the augmentation graph of one tokenizer."""

    name: str
    n_tokens: int  # equivalence classes that carry mass
    alpha: float  # token labeling error, 1 - sum_S max_c M(c, S)
    alpha_pair: float  # inter-class mass of A, P[y(x1) != y(x1')]
    intra_gap: float  # mean over classes of 1 - lambda_2 of the class-restricted graph
    connectivity: np.ndarray  # (C, C) class-to-class mass of A
    tail: float  # sum_{i > k} lambda_i^2
    lam_k1: float  # lambda_{k+1}
    bound: float  # Zhang et al. form, c1 tail + c2 alpha
    bound_haochen: float  # 4 alpha / (1 - lambda_{k+1}) + 8 alpha
    eigenvalues: np.ndarray  # (m,) largest first; all N1 of them when m == N1
    frob_sq: float  # sum of all squared eigenvalues
    n1: int

    def row(self) -> dict[str, float | int | str]:
        """The scalar columns of the printed table."""
        return {
            "tokenizer": self.name,
            "tokens": self.n_tokens,
            "alpha": self.alpha,
            "alpha_pair": self.alpha_pair,
            "intra_gap": self.intra_gap,
            "lam_k1": self.lam_k1,
            "tail": self.tail,
            "bound": self.bound,
            "bound_haochen": self.bound_haochen,
        }


def analyze(name: str, m: sp.csr_matrix, y1: np.ndarray, *, tokens: np.ndarray, cfg: BoundConfig) -> TokenizerReport:
    """Merge M (N1, N2) by `tokens` (N2,), build the augmentation graph and compute every quantity of the report."""
    mt = tokenized_mask_graph(m, tokens)  # (N1, S)
    spec = augmentation_spectrum(mt, top=max(cfg.k + 1, N_EIGS))
    alpha = metrics.labeling_error(mt, y1)
    tail = metrics.spectral_tail(spec, cfg.k)
    lam_k1 = metrics.eigenvalue(spec, cfg.k + 1) if cfg.k < spec.n else 0.0
    return TokenizerReport(
        name=name,
        n_tokens=mt.shape[1],
        alpha=alpha,
        alpha_pair=metrics.pair_labeling_error(mt, y1),
        intra_gap=metrics.mean_intra_class_gap(mt, y1),
        connectivity=metrics.class_connectivity(mt, y1),
        tail=tail,
        lam_k1=lam_k1,
        bound=metrics.bound_zhang(tail, alpha, cfg.c1, c2=cfg.c2),
        bound_haochen=metrics.bound_haochen(alpha, lam_k1),
        eigenvalues=spec.top,
        frob_sq=spec.frob_sq,
        n1=spec.n,
    )
