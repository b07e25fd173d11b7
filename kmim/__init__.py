"""kmim: masked image modeling with discrete, clustering-based tokenizers (K-MIM / ClusterMIM)."""

__version__ = "0.1.0"
