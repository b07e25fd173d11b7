"""The tokenizer interface and its file format.

A tokenizer maps each image patch to one id in [0, K). It is fitted on a dataset's training split, encodes batches
on any device without gradients, and saves to one self-describing file:

    {"format": "kmim-tokenizer", "version": 2, "kind": <registry name>, "meta": {...}, "state": <state_dict>,
     "sha256": <digest of the rest (kmim.digest)>}

`meta` records K, patch size, channels, feature dim, the image normalization it was fitted under, the feature
source, the dataset, fit statistics, the kmim version and git SHA. `check_compatible` refuses a tokenizer whose
patch size, channels or normalization differ from the model's data, naming both values.

Version 1 files (kmim 0.1.0) load: the only layout change is that a frozen encoder's weights moved from
`encoder.*` to `source.encoder.*` when tokenizers became a feature source plus a codebook.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

import kmim
from kmim.digest import content_digest
from kmim.errors import KmimError
from kmim.runinfo import atomic_write, git_sha

FORMAT, VERSION = "kmim-tokenizer", 2
READABLE_VERSIONS = (1, 2)


@dataclass
class TokenizerMeta:
    """What every tokenizer file records, typed; `extra` holds the fields of one kind (patch_norm; hog_cells,
    hog_bins; vq_hidden, vq_epochs, ...; an encoder source's grid, layer, timm_name, timm_kwargs, encoder_input;
    an online target's encoder and temperatures). The file stores `to_dict()`: one flat dict, as format version 2
    always did, so files written before this class existed load unchanged."""

    k: int
    patch_size: int
    in_chans: int
    feature_dim: int = 0
    feature_source: str = ""
    dataset: str = ""
    mean: list[float] | None = None  # the image normalization the tokenizer was fitted under
    std: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)  # fit statistics (inertia, n_fit, codebook use, ...)
    kmim_version: str | None = None
    git_sha: str | None = None
    config: dict[str, Any] | None = None  # the tokenizer section it was fitted with

    FLAT: ClassVar[tuple[str, ...]] = ("k", "patch_size", "in_chans", "feature_dim", "feature_source")
    LATE: ClassVar[tuple[str, ...]] = ("fit", "kmim_version", "git_sha", "config")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenizerMeta:
        """The inverse of `to_dict` (a file's meta); unknown keys go to `extra`."""
        d = dict(d)
        norm = d.pop("normalization", None) or {}
        core = {key: d.pop(key) for key in (*cls.FLAT, "dataset", *cls.LATE) if key in d}
        mean, std = norm.get("mean"), norm.get("std")
        return cls(
            **core,
            mean=None if mean is None else list(mean),
            std=None if std is None else list(std),
            extra=d,
        )

    def to_dict(self) -> dict[str, Any]:
        """The flat dict a file holds: the common fields, the normalization, the dataset, the kind's fields, then
        the fit statistics, provenance and config (the order the fitters always wrote)."""
        out: dict[str, Any] = {key: getattr(self, key) for key in self.FLAT}
        if self.mean is not None:
            out["normalization"] = {"mean": list(self.mean), "std": list(self.std or [])}
        out["dataset"] = self.dataset
        out.update(self.extra)
        if self.fit:
            out["fit"] = self.fit
        if self.kmim_version is not None:
            out.update(kmim_version=self.kmim_version, git_sha=self.git_sha)
        if self.config is not None:
            out["config"] = self.config
        return out

    def stamp(self, fit: dict[str, Any]) -> TokenizerMeta:
        """Record the fit statistics and this kmim's version and git SHA (at the end of every fit)."""
        self.fit = fit
        self.kmim_version, self.git_sha = kmim.__version__, git_sha()
        return self


MetaLike = TokenizerMeta | dict[str, Any]  # a TokenizerMeta, or the flat dict a file holds


def as_meta(meta: MetaLike) -> TokenizerMeta:
    return meta if isinstance(meta, TokenizerMeta) else TokenizerMeta.from_dict(meta)


class Tokenizer(nn.Module):
    """Subclasses set `kind`, implement `encode`; `needs_labels` marks label-using oracles. How a tokenizer is
    rebuilt from a file is the loader named by its registry entry (kmim.fit.TOKENIZERS)."""

    kind: ClassVar[str] = ""
    needs_labels: ClassVar[bool] = False  # oracle tokenizers (class-wise, cross-class) read the image labels

    def __init__(self, meta: MetaLike) -> None:
        super().__init__()
        self.meta = as_meta(meta)

    @property
    def k(self) -> int:
        return int(self.meta.k)

    @property
    def patch_size(self) -> int:
        return int(self.meta.patch_size)

    @property
    def in_chans(self) -> int:
        return int(self.meta.in_chans)

    def encode(self, imgs: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) normalized images [and (B,) labels] -> token ids (B, L) int64, patches in row-major order."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.meta.to_dict()}

    def save(self, path: str | Path) -> None:
        blob = to_blob(self)
        blob["sha256"] = content_digest(blob)
        atomic_write(path, lambda tmp: torch.save(blob, tmp))

    def check_compatible(
        self,
        patch_size: int,
        in_chans: int,
        mean: tuple[float, ...],
        *,
        std: tuple[float, ...],
        where: str = "tokenizer",
    ) -> None:
        """Refuse a tokenizer fitted for other patches or other image normalization than the model's data."""
        if self.patch_size != patch_size:
            raise KmimError(f"{where}: patch size {self.patch_size} does not match the model's patch size {patch_size}")
        if self.in_chans != in_chans:
            raise KmimError(f"{where}: fitted on {self.in_chans}-channel images, the data has {in_chans} channels")
        m = self.meta
        if m.mean is not None and (_rounded(m.mean) != _rounded(mean) or _rounded(m.std or []) != _rounded(std)):
            raise KmimError(
                f"{where}: fitted under normalization mean={m.mean} std={m.std}, "
                f"the data uses mean={list(mean)} std={list(std)}: refit it on this dataset"
            )


def base_meta(
    k: int, patch_size: int, info: Any, *, dataset: str, feature_source: str, feature_dim: int, **extra: Any
) -> TokenizerMeta:
    """The fields every tokenizer file records (see the module docstring); `extra`: the kind's own."""
    return TokenizerMeta(
        k=k,
        patch_size=patch_size,
        in_chans=info.channels,
        feature_dim=feature_dim,
        feature_source=feature_source,
        dataset=dataset,
        mean=list(info.mean),
        std=list(info.std),
        extra=extra,
    )


def _rounded(v: Any) -> list[float]:
    return [round(float(x), 5) for x in v]


def read_tokenizer_file(path: str | Path) -> dict[str, Any]:
    """Load and validate the container of a tokenizer file (not its kind-specific state)."""
    path = Path(path)
    if not path.is_file():
        raise KmimError(f"tokenizer file {path} does not exist: fit one with `kmim tokenize`")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise KmimError(
            f"tokenizer file {path} cannot be read ({type(e).__name__}): it is not a kmim tokenizer"
        ) from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise KmimError(f"{path} is not a kmim tokenizer file (no '{FORMAT}' header)")
    stored = blob.pop("sha256", None)
    if stored is not None and stored != content_digest(blob):
        raise KmimError(f"tokenizer file {path} is damaged (checksum mismatch): refit it with `kmim tokenize`")
    version = blob.get("version")
    if version not in READABLE_VERSIONS:
        raise KmimError(
            f"{path}: tokenizer file version {version} is not supported (this kmim reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}): refit it with `kmim tokenize`"
        )
    return upgrade(blob)


def upgrade(blob: dict[str, Any]) -> dict[str, Any]:
    """A tokenizer blob ({kind, meta, state[, version]}; no version = 1) in the current layout: version-1
    frozen-encoder weights move from `encoder.` to `source.encoder.`."""
    if blob.get("version", 1) == VERSION:
        return blob
    state = {(f"source.{k}" if k.startswith("encoder.") else k): v for k, v in blob["state"].items()}
    return {**blob, "version": VERSION, "state": state}


def to_blob(tok: Tokenizer) -> dict[str, Any]:
    """What a tokenizer file (and a checkpoint's `tokenizer` entry) holds."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "kind": tok.kind,
        "meta": tok.meta.to_dict(),
        "state": tok.state_dict(),
    }
