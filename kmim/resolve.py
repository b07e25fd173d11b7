"""A run configuration checked at the door: `kmim.config` validates every field's range and choices; this adds
the names that live in registries (data.name, model.preset, tokenizer.name, tokenizer.supervised.preset) and the
constraints across fields (heads divide widths, patches tile the image, masking leaves a visible and a masked
patch; `check_tokenizer_path` for pretraining). Every command loads its config through `load_run_config`, before
any work.
"""

from __future__ import annotations

from pathlib import Path

from kmim.config import BatchPlan, RunConfig, load_config, plan_batch
from kmim.data import DATASETS
from kmim.engine.dist import get_rank, get_world_size
from kmim.engine.trainer import SCAN_FILE
from kmim.errors import KmimError
from kmim.fit import TOKENIZERS
from kmim.models import PRESETS, resolve_spec
from kmim.models.mim import num_visible


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
    spec = resolve_spec(cfg.model)
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
        raise KmimError(f"finetune.randaug={value!r} is not valid: timm cannot parse it ({reason}); use e.g. "
                        "rand-m9-mstd0.5-inc1 or none") from None  # fmt: skip


def check_tokenizer_path(cfg: RunConfig) -> None:
    """Pretraining on tokens reads tokenizer.path when set: it must exist (evaluation does not need it)."""
    path = cfg.tokenizer.path
    if path and cfg.train.target == "tokens" and not Path(path).expanduser().is_file():
        raise KmimError(f"tokenizer.path={path} does not exist: fit one with `kmim tokenize` or unset tokenizer.path")


def check_batch(cfg: RunConfig, section: str) -> BatchPlan:
    """The split of `section`'s global batch over this launch's processes (one line if it cannot be split)."""
    return plan_batch(cfg, section, get_world_size())


def check_images(
    cfg: RunConfig, splits: tuple[str, ...], run_dir: Path, progress: bool = True, min_side: int | None = None
) -> dict | None:
    """Header scan of the ImageFolder splits a command will read, before any work (kmim.data.scan): split over the
    processes and data.num_workers workers; one line for the first bad file. Returns the scan's key, for the run
    directory's image_scan.json (a later scan of the same files is skipped); None for other datasets. `min_side`
    defaults to the patch size (pretraining's least side)."""
    if cfg.data.name != "imagefolder":
        return None
    from kmim.data import build_dataset
    from kmim.data.scan import scan_headers

    paths = [path for split in splits for path, _ in build_dataset(cfg.data, split)[0].samples]  # type: ignore[attr-defined]
    side = resolve_spec(cfg.model).patch_size if min_side is None else min_side
    problem, key = scan_headers(paths, side, rank=get_rank(), world=get_world_size(), workers=cfg.data.num_workers,
                                progress=progress, cache=run_dir / SCAN_FILE)  # fmt: skip
    if problem:
        raise KmimError(problem)
    return key


def load_run_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), base: dict | None = None
) -> RunConfig:
    """`kmim.config.load_config` plus `check_run_config`."""
    return check_run_config(load_config(path, overrides, base))
