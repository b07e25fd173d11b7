"""A run configuration checked at the door: `kmim.config` validates every field's range and choices; this adds
the names that live in registries (data.name, model.preset, tokenizer.name, tokenizer.supervised.preset) and the
constraints across fields (heads divide widths, patches tile the image, masking leaves a visible and a masked
patch; `check_tokenizer_path` for pretraining). Every command loads its config through `load_run_config`, before
any work.
"""

from __future__ import annotations

import importlib.util
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from kmim.config import BatchPlan, RunConfig, TokenizerConfig, load_config, plan_batch
from kmim.data import DATASETS
from kmim.data.datasets import FOLDER_DATASETS
from kmim.data.subsets import CLASS_LISTS
from kmim.dist import broadcast_object, get_rank, get_world_size, on_main
from kmim.errors import KmimError
from kmim.fit import TOKENIZERS
from kmim.models import PRESETS, resolve_spec
from kmim.models.mim import num_visible
from kmim.runs import SCAN_FILE


def _choice(field: str, value: str, names: object) -> None:
    if value not in names:  # type: ignore[operator]
        raise KmimError(f"{field}={value!r} is not valid: must be one of {', '.join(names)}")  # type: ignore[arg-type]


def check_run_config(cfg: RunConfig) -> RunConfig:
    """Registry names and cross-field constraints; one KmimError line for the first problem."""
    _choice("data.name", cfg.data.name, DATASETS)
    _choice("model.preset", cfg.model.preset, PRESETS)
    _choice("tokenizer.name", cfg.tokenizer.name, TOKENIZERS)
    _choice("tokenizer.supervised.preset", cfg.tokenizer.supervised.preset, PRESETS)
    check_randaug(cfg.finetune.randaug)
    if cfg.data.class_list is not None:
        _choice("data.class_list", cfg.data.class_list, CLASS_LISTS)
    if cfg.data.cache == "ram" and cfg.data.name not in FOLDER_DATASETS:
        raise KmimError(
            f"data.cache=ram reads image folders ({', '.join(FOLDER_DATASETS)}); data.name={cfg.data.name} is already "
            "held in memory: remove data.cache"
        )
    spec = resolve_spec(cfg.model)
    if spec.head == "cosine" and cfg.train.target != "online-clusters":
        raise KmimError(
            f"model.head=cosine predicts cosines for a soft cross-entropy at train.online.student_temp; "
            f"train.target={cfg.train.target} reads raw logits or pixels: use model.head=linear"
        )
    for width, heads in (("embed_dim", "num_heads"), ("decoder_dim", "decoder_heads")):
        w, h = getattr(spec, width), getattr(spec, heads)
        if w % h:
            raise KmimError(f"model.{width}={w} is not divisible by model.{heads}={h}: change one of them")
    if cfg.data.img_size % spec.patch_size:
        raise KmimError(f"data.img_size={cfg.data.img_size} is not divisible by the patch size {spec.patch_size}")
    n = (cfg.data.img_size // spec.patch_size) ** 2
    keep = num_visible(n, cfg.train.mask_ratio)
    if keep < 1 or keep == n:
        raise KmimError(
            f"train.mask_ratio={cfg.train.mask_ratio} leaves {keep} of {n} patches visible: it must keep at least "
            "one patch visible and mask at least one"
        )
    return cfg


def check_randaug(value: str) -> None:
    """finetune.randaug as timm parses it (the config's own check only looks at its shape)."""
    if value == "none":
        return
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

    hparams = {"translate_const": 100, "img_mean": (124, 116, 104)}
    make = {"rand": rand_augment_transform, "augmix": augment_and_mix_transform}.get(value.split("-")[0])
    try:
        (make or auto_augment_transform)(value, hparams)
    except Exception as e:  # timm asserts, or fails to parse a number
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise KmimError(
            f"finetune.randaug={value!r} is not valid: timm cannot parse it ({reason}); use e.g. "
            "rand-m9-mstd0.5-inc1 or none"
        ) from None


def check_tokenizer_path(cfg: RunConfig) -> None:
    """Pretraining's inputs at the door: tokens read tokenizer.path when set, which must exist (evaluation does not
    need it); online clusters learn their own tokenizer and would silently ignore one; run.wandb needs wandb
    installed (found before any tokenizer fit or file is written)."""
    path = cfg.tokenizer.path
    if path and cfg.train.target == "tokens" and not Path(path).expanduser().is_file():
        raise KmimError(f"tokenizer.path={path} does not exist: fit one with `kmim tokenize` or unset tokenizer.path")
    if path and cfg.train.target == "online-clusters":
        raise KmimError(
            f"tokenizer.path={path} is not read by train.target=online-clusters (it learns its own prototypes): "
            "unset tokenizer.path"
        )
    if cfg.run.wandb and importlib.util.find_spec("wandb") is None:
        raise KmimError("run.wandb=true but wandb is not installed: pip install 'kmim[tracking]' or run.wandb=false")


def training_counts(cfg: RunConfig) -> tuple[int, int]:
    """(images in the training split, images of its least populated class)."""
    import numpy as np

    from kmim.data import build_dataset

    ds = build_dataset(replace(cfg.data, cache="none"), "train")[0]
    targets = getattr(ds, "targets", None)  # ImageFolder; in-memory datasets keep `labels`
    labels = np.asarray(targets if targets is not None else ds.labels)  # type: ignore[attr-defined]
    return len(labels), int(np.bincount(labels).min()) if len(labels) else 0


def check_k_patches(cfg: RunConfig) -> None:
    """K can be no larger than the patches it is drawn from: the training split's for online clusters (Sinkhorn-
    Knopp would spread each patch over prototypes no patch can ever take), those of the tokenizer's fit images for
    K-means over pixels or HOG cells (K-means needs K vectors)."""
    if cfg.train.target == "pixels" or (
        cfg.train.target == "tokens" and cfg.tokenizer.name not in ("kmeans-pixels", "kmeans-hog")
    ):
        return
    n = training_counts(cfg)[0]
    if cfg.train.target == "tokens" and cfg.tokenizer.fit_images:
        n = min(n, cfg.tokenizer.fit_images)
    side = cfg.data.img_size // resolve_spec(cfg.model).patch_size
    what = "train.target=online-clusters assigns to prototypes" if cfg.train.target != "tokens" else "K-means fits"
    if cfg.tokenizer.k > n * side**2:
        raise KmimError(
            f"tokenizer.k={cfg.tokenizer.k} exceeds the {n * side**2:,} training patches ({n:,} images x {side**2} "
            f"patches) that {what}: lower tokenizer.k"
        )


def check_batch(cfg: RunConfig, section: str) -> BatchPlan:
    """The split of `section`'s global batch over this launch's processes (one line if it cannot be split)."""
    return plan_batch(cfg, section, get_world_size())


def check_images(
    cfg: RunConfig, splits: tuple[str, ...], run_dir: Path, *, progress: bool = True, min_side: int | None = None
) -> dict[str, Any] | None:
    """Header scan of the ImageFolder splits a command will read, before any work (kmim.data.scan): split over the
    processes and data.num_workers workers; one line for the first bad file. Returns the scan's key, for the run
    directory's image_scan.json (a later scan of the same files is skipped); None for other datasets. `min_side`
    defaults to the patch size (pretraining's least side)."""
    from kmim.data import build_dataset, listing
    from kmim.data.scan import scan_headers

    if cfg.data.name not in FOLDER_DATASETS:
        return None
    listed = replace(cfg.data, cache="none")  # the file list alone (the RAM cache would decode here)

    def walk() -> dict[str, listing.Stamped]:  # rank 0: one walk of each split, sent to the others
        return listing.kept([str(build_dataset(listed, s)[0].root) for s in splits])  # type: ignore[attr-defined]

    listing.keep(broadcast_object(on_main(walk)))
    folders = [build_dataset(listed, split)[0] for split in splits]  # the kept listings: no walk here
    paths = [path for ds in folders for path, _ in ds.samples]  # type: ignore[attr-defined]
    stamps = [listing.kept([str(ds.root)])[str(ds.root)][0] for ds in folders]  # type: ignore[attr-defined]
    side = resolve_spec(cfg.model).patch_size if min_side is None else min_side
    problem, key = scan_headers(
        paths,
        side,
        stamps,
        rank=get_rank(),
        world=get_world_size(),
        workers=cfg.data.num_workers,
        progress=progress,
        cache=run_dir / SCAN_FILE,
    )
    if problem:
        raise KmimError(problem)
    return key


def load_run_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), base: dict[str, Any] | None = None
) -> RunConfig:
    """`kmim.config.load_config` plus `check_run_config`; a new config (no saved `base`) also has its per-kind
    tokenizer options checked (`check_tokenizer_options`)."""
    cfg = check_run_config(load_config(path, overrides, base))
    if base is None:
        check_tokenizer_options(cfg)
    return cfg


OPTION_GROUPS = ("hog", "supervised", "vq")  # TokenizerConfig's per-kind sub-configs


def unused_option_groups(cfg: RunConfig) -> tuple[str, ...]:
    """The per-kind sub-configs (tokenizer.hog / supervised / vq) that this run's tokenizer does not read; all of
    them when the target is not tokens."""
    used = TOKENIZERS[cfg.tokenizer.name].options if cfg.train.target == "tokens" else None
    return tuple(g for g in OPTION_GROUPS if type(getattr(cfg.tokenizer, g)) is not used)


def check_tokenizer_options(cfg: RunConfig) -> None:
    """A per-kind option set away from its default for a kind that does not read it would be silently ignored:
    refuse it, naming the field and the kind (checked for token targets, where the tokenizer is fitted)."""
    if cfg.train.target != "tokens":
        return
    defaults = TokenizerConfig()
    for group in unused_option_groups(cfg):
        value, default = getattr(cfg.tokenizer, group), getattr(defaults, group)
        for f in fields(value):
            if getattr(value, f.name) != getattr(default, f.name):
                raise KmimError(
                    f"tokenizer.{group}.{f.name}={getattr(value, f.name)!r} is set, but "
                    f"tokenizer.name={cfg.tokenizer.name} does not read tokenizer.{group}.*: remove it "
                    "or choose the tokenizer that reads it"
                )
