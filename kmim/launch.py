"""The one road to start or continue a run, with the same door checks whichever caller takes it (`kmim pretrain`,
`kmim finetune`, the demo, the studies): pretraining from a config (`start_pretraining`, `continue_pretraining`),
fine-tuning from user inputs (a pretrained encoder path or a random-init encoder, a config and overrides: `start`,
`continue_run`), and the one tokenizer every process of a pretraining run shares. A run folder that holds a
checkpoint of the very same config is continued, so the same command line, run again, resumes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, cast

from kmim.config import RunConfig
from kmim.dist import agree, broadcast_object, get_rank, get_world_size, is_main, on_main
from kmim.engine.checkpoint import latest_checkpoint
from kmim.engine.finetune import Finetuner, FinetuneSource
from kmim.engine.plan import RunPlan, Section, resolve_plan
from kmim.engine.pretrain import pretrain, resume
from kmim.engine.trainer import EpochHook, reopen_run, start_run
from kmim.errors import KmimError
from kmim.eval import load_encoder, random_encoder
from kmim.fit import fit_tokenizer, from_blob, prepare_tokenizer, shards_fit, training_split
from kmim.models import EncoderSpec, encoder_kwargs, resolve_spec
from kmim.paths import check_folder_writable, check_run_writable
from kmim.resolve import check_images, check_k_patches, check_tokenizer_path, load_run_config
from kmim.runs import RunDir, carry_neutral, check_resume
from kmim.tokenizers import Tokenizer, to_blob

__all__ = ["continue_pretraining", "continue_run", "shared_tokenizer", "start", "start_pretraining"]


def start_pretraining(
    cfg: RunConfig, *, progress: bool, overwrite: bool = False, on_epoch: EpochHook | None = None
) -> tuple[Path, dict[str, Any]]:
    """A pretraining run of `cfg` (loaded and checked by the caller): the output, batch plan, tokenizer.path and
    image headers checked at the door, the shared tokenizer fitted or read, then train. A folder holding this very
    config's checkpoint is continued instead (a finished one is returned as it is)."""
    run_dir = Path(cfg.out_dir) / cfg.name
    if not overwrite and agree(lambda: RunDir(run_dir).same_run(cfg)):
        if progress and is_main():
            print(f"note: {run_dir} holds this run (same config): continuing it from its last checkpoint")
        return continue_pretraining(str(run_dir), [], progress, on_epoch=on_epoch, command=cfg)

    def check_output() -> RunPlan:
        plan = resolve_plan(cfg, "train")
        check_tokenizer_path(cfg)
        check_k_patches(cfg)
        check_folder_writable(run_dir)
        RunDir(run_dir).check_new(cfg, overwrite)
        return plan

    plan = agree(check_output)
    scan = agree(lambda: check_images(cfg, ("train",), run_dir, progress=progress and is_main()))
    tok = shared_tokenizer(cfg, progress)
    return pretrain(plan, tok, progress, overwrite=overwrite, scan=scan, on_epoch=on_epoch)


def continue_pretraining(
    run_dir: str,
    overrides: list[str],
    progress: bool,
    *,
    on_epoch: EpochHook | None = None,
    command: RunConfig | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Resume (`_reopen`): the checkpoint's config plus overrides, its tokenizer, its weights, optimizer and RNG
    state."""
    path = Path(run_dir)
    ckpt, where, cfg, plan = _reopen(path, overrides, "train", command=command)
    if plan is None:
        return path, RunDir(path).read_results()
    scan = agree(lambda: check_images(cfg, ("train",), path, progress=progress and is_main()))
    tok = None if ckpt.get("tokenizer") is None else from_blob(ckpt["tokenizer"], str(where))
    return resume(path, plan, ckpt, tokenizer=tok, progress=progress, scan=scan, on_epoch=on_epoch)


def _source(path: str, allow_unfinished: bool = False) -> tuple[FinetuneSource, dict[str, Any] | None]:
    enc, info = load_encoder(path)
    total = ((info["config"] or {}).get("train") or {}).get("epochs")
    done = info["epochs_done"]
    if not allow_unfinished and done is not None and total is not None and done < total:
        raise KmimError(
            f"{path} is an unfinished pretraining run (epoch {done} of {total}): finish it with `kmim "
            f"pretrain --resume {path}`, or pass --allow-unfinished to fine-tune it as it is"
        )
    return FinetuneSource(EncoderSpec.from_dict(info["encoder"]), enc.state_dict(), str(info["checkpoint"])), info[
        "config"
    ]


def _config(path: str, config: str | None, overrides: list[str], *, saved: dict[str, Any] | None) -> RunConfig:
    if any(o.startswith("model.") for o in overrides):
        raise KmimError("kmim finetune uses the pretrained encoder's architecture: drop the model.* overrides")
    if saved is None and config is None and not any(o.startswith("data.") for o in overrides):
        raise KmimError(f"{path} carries no run config: name the data with data.name=... or pass -c CONFIG")
    cfg = load_run_config(config, overrides, base=saved)
    if not any(o.startswith("name=") for o in overrides) and saved is not None and cfg.name == saved.get("name"):
        cfg.name = f"{cfg.name}-finetune"  # beside the pretraining run, not into it
    return cfg


def _random_source(config: str | None, overrides: list[str]) -> tuple[FinetuneSource, RunConfig]:
    cfg = load_run_config(config, overrides)
    enc = random_encoder(cfg, cfg.finetune.seed)
    spec = resolve_spec(cfg.model)
    kwargs = encoder_kwargs(spec, cfg.data.img_size, cast(Any, enc.patch_embed).proj.in_channels)
    if not any(o.startswith("name=") for o in overrides):
        cfg.name = "random-init-finetune"
    path = f"random-init (seed {cfg.finetune.seed})"
    return FinetuneSource(EncoderSpec(spec.timm_name, kwargs), enc.state_dict(), path), cfg


def start(
    path: str | None,
    config: str | None,
    overrides: list[str],
    *,
    progress: bool,
    overwrite: bool,
    allow_unfinished: bool = False,
) -> tuple[Path, dict[str, Any]]:
    if path is None:  # --random-init
        source, cfg = agree(lambda: _random_source(config, overrides))
    else:
        source, saved = agree(lambda: _source(path, allow_unfinished))
        cfg = agree(lambda: _config(path, config, overrides, saved=saved))
    run_dir = Path(cfg.out_dir) / cfg.name
    if not overwrite and agree(lambda: RunDir(run_dir).same_run(cfg)):  # the same command line, run again
        if progress and is_main():
            print(f"note: {run_dir} holds this run (same config): continuing it from its last checkpoint")
        return continue_run(str(run_dir), [], progress, command=cfg)

    def check_output() -> RunPlan:
        plan = resolve_plan(cfg, "finetune")
        check_folder_writable(run_dir)
        RunDir(run_dir).check_new(cfg, overwrite)
        return plan

    plan = agree(check_output)
    scan = agree(lambda: check_images(cfg, ("train", "test"), run_dir, progress=progress and is_main(), min_side=1))
    trainer = Finetuner(plan, run_dir, source, progress=progress)
    start_run(trainer, overwrite, scan)
    return run_dir, trainer.run()


def continue_run(
    run_dir: str, overrides: list[str], progress: bool, *, command: RunConfig | None = None
) -> tuple[Path, dict[str, Any]]:
    path = Path(run_dir)
    ckpt, _, cfg, plan = _reopen(path, overrides, "finetune", command=command)
    if plan is None:
        return path, RunDir(path).read_results()
    source = FinetuneSource(EncoderSpec.from_dict(ckpt["classifier"]).without_head(), None, ckpt["source"])
    trainer = Finetuner(plan, path, source, progress=progress, resume_from=ckpt)
    scan = agree(lambda: check_images(cfg, ("train", "test"), path, progress=progress and is_main(), min_side=1))
    reopen_run(path, cfg, ckpt["train_state"]["epoch"], scan=scan)
    return path, trainer.run()


WRONG_KIND = {
    "train": "{path} is a fine-tuning run: resume it with `kmim finetune --resume {path}`",
    "finetune": "{path} is not a kmim finetune run: resume pretraining runs with `kmim pretrain --resume`",
}


def _reopen(
    path: Path, overrides: list[str], section: Section, *, command: RunConfig | None
) -> tuple[dict[str, Any], Path, RunConfig, RunPlan | None]:
    """What continuing a run checks, for both kinds: its newest intact checkpoint (a damaged last.pt falls back to a
    numbered one, with a note), of this kind; the checkpoint's config plus overrides (and `command`'s NEUTRAL
    fields when the command line that started it runs again), which the checkpoint must be able to continue under;
    then, unless the run is finished (plan None), its plan and a writable folder."""
    ckpt, where, note = agree(lambda: latest_checkpoint(path))
    if (ckpt.get("kind") == "finetune") != (section == "finetune"):
        raise KmimError(WRONG_KIND[section].format(path=path))
    cfg = agree(lambda: load_run_config(None, overrides, base=ckpt["config"]))
    cfg = cfg if command is None else carry_neutral(cfg, command)
    check_resume(ckpt["config"], cfg, ckpt["train_state"]["epoch"], section=section)
    if _finished(path, ckpt, cfg.train.epochs if section == "train" else cfg.finetune.epochs):
        return ckpt, where, cfg, None
    plan = agree(lambda: resolve_plan(cfg, section))
    agree(lambda: check_run_writable(path))
    if note and is_main():
        print(f"note: {note}", file=sys.stderr)
    return ckpt, where, cfg, plan


def _finished(path: Path, ckpt: dict[str, Any], epochs: int) -> bool:
    """The run has its results and its checkpoint is at the (possibly overridden) last epoch: nothing to train, its
    results stand (a finished run resumed again used to append a duplicate metrics row)."""
    return RunDir(path).status() == "finished" and ckpt["train_state"]["epoch"] >= epochs


def shared_tokenizer(cfg: RunConfig, progress: bool) -> Tokenizer | None:
    """The same tokenizer on every process: each reads tokenizer.path; or all processes fit a K-means tokenizer
    together (each reads its share of the images, rank 0 runs K-means and sends the centroids); or rank 0 fits a
    kind that trains a model first alone and sends it (the others wait with `on_main`, past the 30-min PG timeout)."""
    if cfg.train.target != "tokens" or cfg.tokenizer.path:
        return agree(lambda: prepare_tokenizer(cfg, progress and is_main()))
    if shards_fit(cfg.tokenizer):  # the data is agreed on first: the fit itself runs collectives
        data = agree(lambda: training_split(cfg, get_rank(), get_world_size()))
        return fit_tokenizer(cfg.tokenizer, data, progress and is_main())
    blob = on_main(lambda: to_blob(cast(Tokenizer, prepare_tokenizer(cfg, progress))))  # hours for vq: no PG timeout
    return from_blob(broadcast_object(blob), "the tokenizer fitted on rank 0")
