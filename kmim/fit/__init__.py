"""Fitting tokenizers (above the engine) and the one registry of tokenizer kinds.

Each entry names the kind's options (the `tokenizer.*` sub-config it reads beyond the shared K-means and
encoder fields, or None), its fitter (`fit(cfg.tokenizer, FitData, progress) -> Tokenizer`) and its loader
(`load(meta, state) -> Tokenizer`, used for tokenizer files and checkpoints).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from kmim.config import HOGConfig, RunConfig, SupervisedConfig, TokenizerConfig, VQConfig, config_to_dict
from kmim.data import build_dataset
from kmim.errors import KmimError
from kmim.fit import fitters, oracle
from kmim.fit.data import FitData
from kmim.models import resolve_spec
from kmim.tokenizers import (
    ClassWiseTokenizer,
    CrossClassTokenizer,
    EncoderSource,
    HOGSource,
    KMeansTokenizer,
    PixelSource,
    RandomTokenizer,
    Tokenizer,
    TokenizerMeta,
    VQTokenizer,
    as_meta,
    read_tokenizer_file,
    upgrade,
)
from kmim.tokenizers.online import OnlineClusters


@dataclass(frozen=True)
class TokenizerEntry:
    name: str
    options: type | None  # the sub-config of TokenizerConfig this kind reads (tokenizer.<options>.*), if any
    fit: Callable[[TokenizerConfig, FitData, bool], Tokenizer]
    load: Callable[[TokenizerMeta, dict[str, Any]], Tokenizer]
    summary: str


TOKENIZERS: dict[str, TokenizerEntry] = {
    e.name: e
    for e in (
        TokenizerEntry(
            "kmeans-pixels",
            None,
            fitters.fit_pixels,
            partial(KMeansTokenizer.from_state, source_cls=PixelSource),
            "K-means over pixel patches (K-MIM PIXEL; tokenizer.patch_norm for normalized patches)",
        ),
        TokenizerEntry(
            "kmeans-hog",
            HOGConfig,
            fitters.fit_hog,
            partial(KMeansTokenizer.from_state, source_cls=HOGSource),
            "K-means over per-patch HOG descriptors (discretized MaskFeat targets)",
        ),
        TokenizerEntry(
            "kmeans-features",
            SupervisedConfig,
            fitters.fit_features,
            partial(KMeansTokenizer.from_state, source_cls=EncoderSource),
            "K-means over a frozen encoder's patch features (timm, a kmim run, or supervised)",
        ),
        TokenizerEntry("vq", VQConfig, fitters.fit_vq, VQTokenizer.from_state, "a small VQ-VAE"),
        TokenizerEntry(
            "class-wise",
            None,
            oracle.fit_class_wise,
            lambda meta, state: ClassWiseTokenizer(meta, state["centroids"]),
            "oracle: per-class K-means, tokens never shared by classes (reads labels)",
        ),
        TokenizerEntry(
            "cross-class",
            None,
            oracle.fit_cross_class,
            lambda meta, state: CrossClassTokenizer(meta, state["centroids"], state["ranks"]),
            "adversarial oracle: token = size rank within the class (reads labels)",
        ),
        TokenizerEntry(
            "random",
            None,
            oracle.fit_random,
            lambda meta, state: RandomTokenizer(meta, state["hash_a"], state["hash_b"]),
            "a seeded hash of the patch values",
        ),
    )
}


def entry(name: str) -> TokenizerEntry:
    if name not in TOKENIZERS:
        raise KmimError(f"tokenizer.name={name!r} is not valid: must be one of {', '.join(TOKENIZERS)}")
    return TOKENIZERS[name]


def fit_tokenizer(cfg: TokenizerConfig, data: FitData, progress: bool = True) -> Tokenizer:
    """Fit tokenizer `cfg.name` on `data` (the eval-transformed training split); meta.config records `cfg`."""
    tok = entry(cfg.name).fit(cfg, data, progress)
    tok.meta.config = config_to_dict(cfg)
    return tok


def from_blob(blob: dict[str, Any], where: str) -> Tokenizer:
    """A tokenizer from a file's or checkpoint's {kind, meta, state[, version]}."""
    blob = upgrade(blob)
    if blob["kind"] == OnlineClusters.kind:  # learned during pretraining (train.target=online-clusters), not fitted
        return OnlineClusters.from_state(as_meta(blob["meta"]), blob["state"])
    if blob["kind"] not in TOKENIZERS:
        raise KmimError(f"{where}: tokenizer kind {blob['kind']!r} is unknown: valid kinds are {', '.join(TOKENIZERS)}")
    return TOKENIZERS[blob["kind"]].load(as_meta(blob["meta"]), blob["state"])


def load_tokenizer(path: str | Path) -> Tokenizer:
    return from_blob(read_tokenizer_file(path), str(path))


SHARDED_KINDS = ("kmeans-pixels", "kmeans-hog", "kmeans-features")


def shards_fit(cfg: TokenizerConfig) -> bool:
    """Whether every process takes part in fitting this tokenizer (a K-means over a fixed feature source: each
    reads its share of the images) or rank 0 fits it alone (kinds that train a model first: vq, a supervised
    encoder; and the oracles)."""
    return cfg.name in SHARDED_KINDS and cfg.encoder != "supervised"


def training_split(cfg: RunConfig, rank: int = 0, world: int = 1) -> FitData:
    """The training split of cfg.data with the eval transform, as every fitter receives it, read by process
    `rank` of `world` with data.num_workers DataLoader workers."""
    patch = resolve_spec(cfg.model).patch_size
    ds, info = build_dataset(cfg.data, "train", min_side=patch)
    return FitData(ds, info, patch, cfg.data.name, rank, world, cfg.data.num_workers)


def prepare_tokenizer(cfg: RunConfig, progress: bool = True, rank: int = 0, *, world: int = 1) -> Tokenizer | None:
    """What pretraining needs: None for pixel targets, else the tokenizer at cfg.tokenizer.path or one fitted on
    the training split (by process `rank` of `world` when the kind shards its fit: `shards_fit`)."""
    if cfg.train.target != "tokens":
        return None
    if cfg.tokenizer.path:
        return load_tokenizer(cfg.tokenizer.path)
    return fit_tokenizer(cfg.tokenizer, training_split(cfg, rank, world), progress)


__all__ = [
    "TOKENIZERS",
    "FitData",
    "TokenizerEntry",
    "entry",
    "fit_tokenizer",
    "from_blob",
    "load_tokenizer",
    "prepare_tokenizer",
    "shards_fit",
    "training_split",
]
