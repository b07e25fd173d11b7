"""Augmentation-graph theory of discrete tokenization in MIM (docs/theory.md).

graph: mask graph -> tokenized mask graph -> augmentation graph and its normalized spectrum.
metrics: labeling error, class connectivity, spectral tail and the downstream error bounds (pure functions).
population: a synthetic mask graph with an adjustable class overlap, and tokenizers on it.
empirical: the mask graph of mnist5k patches under pixel K-means and other tokenizers.
analysis, experiments, report, command: the `kmim theory` studies, tables, plots and CLI.
"""
