"""`kmim knn` and `kmim probe`: evaluate a frozen encoder (a run, a checkpoint, an encoder.pt, or an untrained
encoder with --random-init) on the test split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from kmim.argtypes import add_config_arguments, print_json
from kmim.dist import agree, in_process_group, is_main, local_device, resolve_device
from kmim.errors import KmimError
from kmim.eval import evaluate_encoder, load_encoder, random_encoder
from kmim.eval.resume import probe_checkpoint, run_dir_of
from kmim.resolve import check_batch, load_run_config
from kmim.runinfo import write_json

if TYPE_CHECKING:
    from torch import nn

    from kmim.config import RunConfig

WHAT = {"knn": "weighted kNN (k=20, T=0.07)", "probe": "linear or attentive probe (eval.probe)"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", help="run directory, checkpoint (.pt) or encoder.pt")
    p.add_argument(
        "--random-init",
        action="store_true",
        help="evaluate an untrained encoder of the config's model (the floor pretraining must clear)",
    )
    p.add_argument(
        "--network",
        choices=("student", "teacher"),
        default="student",
        help="for an online-clusters run: the encoder trained by gradient (student, default) or its EMA teacher "
        "(what CAPI evaluates); results.json says which",
    )
    add_config_arguments(p)


def evaluate(
    path: str | None,
    random_init: bool,
    config: str | None,
    *,
    overrides: list[str],
    methods: tuple[str, ...],
    progress: bool = True,
    network: str = "student",
) -> dict[str, Any]:
    """kNN and/or linear probe of the encoder at `path` under the run's saved config (plus `config` and overrides),
    or of an untrained encoder under `config` and overrides. Inputs are checked on every process first."""
    encoder, cfg, checkpoint = agree(
        lambda: _encoder_and_config(path, random_init, config, overrides=overrides, network=network)
    )
    ck = None
    if "probe" in methods and cfg.eval.probe in ("lars", "attentive"):
        agree(lambda: check_batch(cfg, "eval" if cfg.eval.probe == "lars" else "attentive"))
        ck = None if random_init else probe_checkpoint(Path(checkpoint), cfg, network)
    device = str(local_device(resolve_device(cfg.run.device)))
    res = evaluate_encoder(encoder, cfg, methods, device=device, progress=progress, checkpoint=ck)
    res["checkpoint"], res["network"] = checkpoint, network
    if is_main() and not random_init:
        record(Path(checkpoint), tuple(m if network == "student" else f"{m}_teacher" for m in methods), res)
    return res


def record(checkpoint: Path, methods: tuple[str, ...], res: dict[str, Any]) -> None:
    """Keep the result in the run directory's evaluations.json ({method: result}, the latest per method), where
    `kmim export` and readers find it; encoders outside a run directory are not recorded."""
    run_dir = run_dir_of(checkpoint)
    if run_dir is None:
        return
    path = run_dir / "evaluations.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    write_json(path, {**saved, **{m: res for m in methods}})


def _encoder_and_config(
    path: str | None, random_init: bool, config: str | None, *, overrides: list[str], network: str = "student"
) -> tuple[nn.Module, RunConfig, str]:
    if random_init == (path is not None):
        raise KmimError("give either an encoder PATH or --random-init (with -c CONFIG / overrides), not both")
    if random_init:
        cfg = load_run_config(config, overrides)
        encoder, checkpoint = random_encoder(cfg, cfg.train.seed), f"random-init (seed {cfg.train.seed})"
    else:
        encoder, info = load_encoder(cast(str, path), network)
        if info["config"] is None and config is None and not any(o.startswith("data.") for o in overrides):
            raise KmimError(
                f"{path} carries no run config: name the evaluation data with data.name=... (and data.root=...) "
                "or pass -c CONFIG"
            )
        cfg = load_run_config(config, overrides, base=info["config"])
        checkpoint = info["checkpoint"]
    return encoder, cfg, checkpoint


def run(args: argparse.Namespace) -> int:
    """Under torchrun, features are extracted in shards and gathered; every process computes the same result and
    rank 0 prints it."""
    path, overrides = args.path, list(args.overrides)
    res, main = in_process_group(
        lambda: evaluate(
            path,
            args.random_init,
            args.config,
            overrides=overrides,
            methods=(args.command,),
            progress=not args.quiet and is_main(),
            network=args.network,
        )
    )
    if main:
        print_json(res)
    return 0
