"""One run lifecycle for every kind of run: pretraining, fine-tuning, and what the studies and the demo launch.

    check_new ─▶ start ─▶ epochs (checkpoints/last.pt each, checkpoint-NNNN.pt every save_every) ─▶ finish
                             ▲                                                                   │
                             └─ check_resume + reopen (after a kill, or to extend a finished run) ◀┘

A run directory holds config.yaml (the resolved config it runs under, rewritten by every resume), env.json (the
environment and code that started it, and under "resumes" those of every resume, with the epoch it resumed at),
metrics.jsonl (rows of logged steps and of epochs; a resume drops the rows of the epochs it is about to redo),
checkpoints/, results.json (once finished), image_scan.json (the clean header scan of its images) and its inputs
(pretraining: tokenizer.pt). `start`, `reopen` and `write_results` write; only rank 0 calls them. Every refusal
names the folder and what to do instead.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import yaml

from kmim.config import RunConfig, config_to_dict, config_to_yaml, load_config
from kmim.errors import KmimError
from kmim.runinfo import append_jsonl, clean_orphan_tmp, environment, read_jsonl, write_json, write_text

SCAN_FILE = "image_scan.json"  # the clean header scan of the run's image files (kmim.resolve.check_images)
RESULT_FILES = ("results.json", "encoder.pt", "checkpoints")
# what a resume may not change: the architecture, the data the weights were trained on, the objective
FROZEN_ON_RESUME = (
    "model",
    "data.name",
    "data.img_size",
    "train.target",
    "train.norm_pix",
    "tokenizer",
    "train.online",
)


class RunDir:
    """The folder of one run and the rules every command follows with it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def results(self) -> Path:
        return self.path / "results.json"

    def status(self) -> str:
        """ "finished" (results.json), "unfinished" (a checkpoint, no results) or "new" (neither)."""
        if self.results.is_file():
            return "finished"
        return "unfinished" if any(self.checkpoints.glob("*.pt")) else "new"

    def numbered_checkpoints(self) -> list[Path]:
        """checkpoint-NNNN.pt files, by epoch."""
        return sorted(self.checkpoints.glob("checkpoint-*.pt"), key=lambda p: int(p.stem.split("-")[1]))

    def same_run(self, cfg: RunConfig) -> bool:
        """This folder holds a checkpoint of a run started with `cfg` (its config.yaml, read with today's schema and
        defaults, so a run saved by an older kmim still matches), the NEUTRAL fields aside: the same command line,
        run again, continues it (auto-resume after a preemption or a kill), also from a moved folder or on an
        allocation that reads its own copy of the data (continue it with `carry_neutral`)."""
        saved = self.path / "config.yaml"
        if not (self.last.exists() and saved.is_file()):
            return False
        try:
            old = load_config(None, (), base=cast(dict[str, Any], yaml.safe_load(saved.read_text())))
        except (yaml.YAMLError, KmimError):
            return False  # a damaged config.yaml: check_new names the folder
        return _results_part(old) == _results_part(cfg)

    def check_new(self, cfg: RunConfig, overwrite: bool = False) -> None:
        """A fresh run may use the folder when it is empty or missing, when it holds only the config.yaml of the
        same config (a run killed before its first checkpoint), or with `overwrite`. Anything else is refused."""
        run_dir = self.path
        if overwrite or not run_dir.exists():
            return
        if self.last.exists():
            raise KmimError(
                f"run directory {run_dir} already holds a run: pass --resume {run_dir} (or the command that started "
                "it, unchanged) to continue it, choose another name= or pass --overwrite to replace it"
            )
        found = [f for f in RESULT_FILES if (run_dir / f).exists()]
        if found:
            raise KmimError(
                f"run directory {run_dir} holds results ({', '.join(found)}) but no checkpoint to "
                "resume: choose another name= or pass --overwrite to replace it"
            )
        saved = run_dir / "config.yaml"
        if saved.is_file() and saved.read_text() != config_to_yaml(cfg):
            raise KmimError(
                f"run directory {run_dir} was started with another config ({saved}): choose another "
                "name= or pass --overwrite to replace it"
            )

    def start(
        self,
        cfg: RunConfig,
        *,
        overwrite: bool = False,
        inputs: Callable[[], None] | None = None,
        scan: dict[str, Any] | None = None,
    ) -> None:
        """Create the folder and write config.yaml, env.json, the run's `inputs()` and the clean image scan `scan`
        (after every input checked out); with `overwrite`, whatever the folder held is removed first."""
        if overwrite and self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        clean_orphan_tmp(self.path)
        self.metrics.unlink(missing_ok=True)
        write_text(self.path / "config.yaml", config_to_yaml(cfg))
        write_json(self.path / "env.json", environment())
        if inputs is not None:
            inputs()
        if scan is not None:
            write_json(self.path / SCAN_FILE, scan)

    def reopen(self, cfg: RunConfig, epoch: int, scan: dict[str, Any] | None = None) -> None:
        """What every resume does before training: remove the temp files a kill left behind, save the config it
        continues under and its clean image scan, and forget the metrics rows of epochs >= `epoch` (about to be
        redone; a torn last line is dropped with a warning by read_jsonl), and add this session's environment (code
        commit, versions, machine) to env.json's "resumes": a run continued under other code says so."""
        self._add_resume(epoch)
        if scan is not None:
            write_json(self.path / SCAN_FILE, scan)
        for folder in (self.path, self.checkpoints):
            clean_orphan_tmp(folder)
        write_text(self.path / "config.yaml", config_to_yaml(cfg))
        if self.metrics.is_file():
            rows = [r for r in read_jsonl(self.metrics) if r.get("epoch", 0) < epoch]
            write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in rows))

    def commits(self) -> list[str | None]:
        """The code commits (git_sha) of the session that started the run and of every resume, each once, in order."""
        try:
            env = json.loads((self.path / "env.json").read_text())
        except (OSError, ValueError):
            return []
        shas = [env.get("git_sha"), *(r.get("git_sha") for r in env.get("resumes", []))]
        return list(dict.fromkeys(shas))

    def _add_resume(self, epoch: int) -> None:
        path = self.path / "env.json"
        try:
            env = json.loads(path.read_text()) if path.is_file() else {}
        except ValueError:  # a torn env.json (a kill mid-write before atomic writes): keep the resumes from now on
            env = {}
        env.setdefault("resumes", []).append({"epoch": epoch, **environment()})
        write_json(path, env)

    def log(self, row: dict[str, Any]) -> None:
        """Append a metrics row. Step rows are flushed, not fsynced (an fsync per row inside the loop stalls it on a
        shared filesystem); each epoch's row fsyncs the file, so what a crash can lose are the step rows of the
        epoch in progress, which a resume redoes and drops anyway."""
        append_jsonl(self.metrics, row, durable="step" not in row)

    def write_results(self, results: dict[str, Any]) -> None:
        write_json(self.results, results)

    def read_results(self) -> dict[str, Any]:
        return cast(dict[str, Any], json.loads(self.results.read_text()))

    def last_epoch_loss(self) -> float | None:
        rows = read_jsonl(self.metrics) if self.metrics.is_file() else []
        vals = [r["epoch_loss"] for r in rows if "epoch_loss" in r]
        return vals[-1] if vals else None


NEUTRAL = (
    "out_dir",
    "data.root",
    "data.num_workers",
    "data.prefetch_factor",
    "data.cache",
    *(f"run.{k}" for k in ("compile", "tensorboard", "wandb", "wandb_project", "wandb_mode")),
)  # where the run and its data live, how the data is read and what is logged: the numbers do not depend on these
# (run.compile can change the last bits of GPU arithmetic, not the recipe; run.device can change more, so it is not
# among them)


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config dict as {dotted.path: value}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and k != "encoder_kwargs":
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _results_part(cfg: RunConfig) -> dict[str, Any]:
    return {k: v for k, v in flat(config_to_dict(cfg)).items() if k not in NEUTRAL}


def carry_neutral(cfg: RunConfig, src: RunConfig) -> RunConfig:
    """`cfg` (a checkpoint's config) with `src`'s NEUTRAL fields: a run continued by the same command line reads the
    data and writes where that command says (a moved folder, another allocation's data copy)."""
    out = copy.deepcopy(cfg)
    for path in NEUTRAL:
        *parents, leaf = path.split(".")
        dst, s = out, src
        for part in parents:
            dst, s = getattr(dst, part), getattr(s, part)
        setattr(dst, leaf, getattr(s, leaf))
    return out


def check_resume(saved: dict[str, Any], cfg: RunConfig, done_epochs: int, *, section: str = "train") -> None:
    """Refuse overrides that a checkpoint cannot continue under (one line naming the field); `section` holds the
    run's epochs (train, or finetune for a fine-tuning run)."""
    saved, new = config_to_dict(load_config(None, (), base=saved)), config_to_dict(cfg)  # same defaults and layout
    for path in FROZEN_ON_RESUME:
        old_v, new_v = _at(saved, path), _at(new, path)
        if old_v != new_v:
            raise KmimError(
                f"--resume cannot change {path} (checkpoint: {old_v}, now: {new_v}): start a new run "
                "with another name= instead"
            )
    epochs = getattr(cfg, section).epochs
    if epochs < done_epochs:
        raise KmimError(
            f"{section}.epochs={epochs} is below the {done_epochs} epochs the checkpoint already "
            f"trained: a resume can keep or extend the run, not shorten it"
        )


def _at(d: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        d = d.get(part, {}) if isinstance(d, dict) else {}
    return d
