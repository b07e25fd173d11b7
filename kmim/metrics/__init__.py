"""Pure metrics over discrete tokens: TCAS, NMI, purity, codebook usage, perplexity, dead codes."""

from kmim.metrics.tokens import (
    class_connectivity,
    codebook_usage,
    cooccurrence,
    dead_codes,
    nmi,
    perplexity,
    purity,
    tcas,
    tcas_from_counts,
    tcas_null,
    token_metrics,
)

__all__ = [
    "class_connectivity",
    "codebook_usage",
    "cooccurrence",
    "dead_codes",
    "nmi",
    "perplexity",
    "purity",
    "tcas",
    "tcas_from_counts",
    "tcas_null",
    "token_metrics",
]
