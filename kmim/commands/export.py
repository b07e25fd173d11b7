"""`kmim export RUN --out DIR`: a hub-ready folder of the pretrained encoder that timm alone loads.

DIR holds `model.safetensors` (the encoder only) and `config.json` (timm's `architecture`, `model_args` and
`pretrained_cfg`: input size, mean/std, bicubic, crop_pct 0.875, num_classes 0), both written by timm's own
`save_for_hf`, and a model card `README.md` (YAML front matter for the hub: library_name timm, license, tags,
datasets; the run's evaluation numbers, the exact kmim command and git SHA). Load it with

    timm.create_model("local-dir:DIR")              # or "hf-hub:USER/NAME" after `huggingface-cli upload`

The run directory's checkpoints (decoder, tokenizer, optimizer) stay the resumable artefact; the export is for use.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from timm.models import save_for_hf

from kmim.errors import KmimError
from kmim.eval import load_encoder
from kmim.paths import check_folder_writable

CROP_PCT = 0.875  # kmim's eval view: Resize(img_size / 0.875) + CenterCrop(img_size)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="pretraining run directory (or its encoder.pt / a checkpoint)")
    p.add_argument("--out", required=True, help="folder to write (must not exist)")
    p.add_argument("--license", default="mit", help="license of the weights in the card (default: mit)")
    p.add_argument(
        "--allow-unfinished",
        action="store_true",
        help="export a run stopped before its last epoch (the card says how many epochs it trained)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def evaluation_numbers(run_dir: Path) -> dict[str, Any]:
    """kNN / probe numbers saved by `kmim knn` and `kmim probe` (evaluations.json) and the fine-tuning top-1 of a
    `RUN-finetune` run beside it, when present."""
    out: dict[str, Any] = {}
    for method, res in _json(run_dir / "evaluations.json").items():
        for key in ("knn_top1", "linear_probe_top1", "linear_probe_best_top1"):
            if key in res:
                out[key] = res[key]
        if method == "probe" and "linear_probe" in res:
            out["linear_probe_recipe"] = res["linear_probe"]
    ft = _json(run_dir.parent / f"{run_dir.name}-finetune" / "results.json")
    for key in ("finetune_top1", "finetune_best_top1"):
        if key in ft:
            out[key] = ft[key]
    return out


def model_card(
    spec: dict[str, Any], cfg: dict[str, Any], numbers: dict[str, Any], *, env: dict[str, Any], license_id: str
) -> str:
    """README.md with hub front matter; every number comes from the run directory's files."""
    data, train = cfg.get("data", {}), cfg.get("train", {})
    target = train.get("target")
    method = {"tokens": "K-MIM (ClusterMIM)", "online-clusters": "online clustering targets (CAPI-style)"}.get(
        target, "MAE"
    )
    tok = cfg.get("tokenizer", {}) if target == "tokens" else {}
    kind = f", targets: {cfg.get('tokenizer', {}).get('k')} online prototypes." if target == "online-clusters" else ""
    dataset = data.get("root") or data.get("name")
    front = [
        "---",
        "library_name: timm",
        f"license: {license_id}",
        "tags:",
        "- image-feature-extraction",
        "- timm",
        "- masked-image-modeling",
        "- kmim",
        "datasets:",
        f"- {data.get('name')}",
        "---",
    ]
    lines = [
        f"# {spec['timm_name']} pretrained with {method} (kmim)",
        "",
        f"A ViT encoder pretrained by [kmim](https://github.com/) with {method} on `{dataset}` "
        f"({train.get('epochs')} epochs, global batch {train.get('batch_size')}, mask ratio {train.get('mask_ratio')})"
        + (f", targets: `{tok.get('name')}` tokenizer with K = {tok.get('k')}." if tok else kind or ", pixel targets."),
        "",
        "```python",
        "import timm",
        'model = timm.create_model("local-dir:PATH_TO_THIS_FOLDER")  # or "hf-hub:USER/NAME" once uploaded',
        "features = model.forward_features(images)  # (B, 1 + L, D): CLS token, then patch tokens",
        "```",
        "",
        "## Evaluation (from the run directory)",
        "",
    ]
    if numbers:
        lines += [
            "| metric | top-1 % |",
            "|---|---:|",
            *(f"| {k} | {v} |" for k, v in numbers.items() if k != "linear_probe_recipe"),
        ]
        if "linear_probe_recipe" in numbers:
            lines += ["", f"Linear probe recipe: {numbers['linear_probe_recipe']}."]
    else:
        lines.append("No evaluation was recorded: run `kmim knn RUN`, `kmim probe RUN` or `kmim finetune RUN` first.")
    lines += [
        "",
        "## Provenance",
        "",
        f"- kmim {env.get('kmim_version', '?')}, git {env.get('git_sha') or 'unknown'}; torch {env.get('torch', '?')}",
        "- The full training checkpoint (decoder, tokenizer, optimizer state) stays in the run directory and is what",
        "  `kmim pretrain --resume` continues; this folder holds the encoder only.",
        "",
        "## Config",
        "",
        "```yaml",
        json.dumps(cfg, indent=2),
        "```",
    ]
    return "\n".join([*front, *lines]) + "\n"


def export(path: str, out: str, license_id: str = "mit", *, allow_unfinished: bool = False) -> Path:
    dst = Path(out).expanduser()
    if dst.exists():
        raise KmimError(f"--out {dst} already exists: choose a new folder (an export never replaces files)")
    if not dst.parent.is_dir():
        raise KmimError(f"--out {dst}: its folder {dst.parent} does not exist: create it first")
    check_folder_writable(dst.parent)
    enc, info = load_encoder(path)
    if info["config"] is None:
        raise KmimError(f"{path} carries no run config: export a run directory or its checkpoints/last.pt")
    spec, cfg = info["encoder"], info["config"]
    planned, done = (cfg.get("train") or {}).get("epochs"), info["epochs_done"]
    if done is not None and planned is not None and done < planned:
        if not allow_unfinished:
            raise KmimError(
                f"{path} is an unfinished run (epoch {done} of {planned}): finish it with `kmim pretrain --resume`, "
                "or pass --allow-unfinished to export it as it is"
            )
        cfg = {**cfg, "train": {**cfg["train"], "epochs": done}}  # the card states what was trained
    run_dir = Path(info["checkpoint"]).parent
    run_dir = run_dir.parent if run_dir.name == "checkpoints" else run_dir
    data = cfg.get("data", {})
    mean, std = _stats(run_dir, cfg)
    data_config = {
        "input_size": (spec["timm_kwargs"].get("in_chans", 3), data.get("img_size"), data.get("img_size")),
        "interpolation": "bicubic",
        "crop_pct": CROP_PCT,
        "mean": mean,
        "std": std,
        "tag": "kmim",  # not the architecture's default weights' tag (augreg_in21k_ft_in1k) or license
        "license": license_id,
    }
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=f".{dst.name}.") as tmp:
        folder = Path(tmp) / "export"
        save_for_hf(
            enc,
            str(folder),
            model_config={"pretrained_cfg": data_config},
            model_args=spec["timm_kwargs"],
            safe_serialization=True,
        )
        env = _json(run_dir / "env.json")
        card = model_card(spec, cfg, evaluation_numbers(run_dir), env=env, license_id=license_id)
        (folder / "README.md").write_text(card)
        shutil.move(str(folder), dst)
    return dst


def _stats(run_dir: Path, cfg: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation the encoder was trained with: its dataset's, or (data not on this machine) the one its
    tokenizer recorded."""
    from kmim.config import load_config
    from kmim.data import build_dataset
    from kmim.engine.checkpoint import load_checkpoint

    try:
        _, info = build_dataset(load_config(None, (), base=cfg).data, "test")
        return tuple(info.mean), tuple(info.std)
    except KmimError:
        last = run_dir / "checkpoints" / "last.pt"
        meta = ((load_checkpoint(last).get("tokenizer") or {}).get("meta") or {}) if last.is_file() else {}
        norm = meta.get("normalization") or {}
        if "mean" in norm and "std" in norm:
            return tuple(norm["mean"]), tuple(norm["std"])
        raise KmimError(
            f"the data of {run_dir} ({cfg.get('data', {}).get('root')}) is not readable here and no "
            "tokenizer recorded its mean/std: export on a machine that has the data"
        ) from None


def run(args: argparse.Namespace) -> int:
    dst = export(args.path, args.out, args.license, allow_unfinished=args.allow_unfinished)
    if not args.quiet:
        print(f"exported {dst}: {', '.join(sorted(p.name for p in dst.iterdir()))}")
        print(f'load with timm alone: timm.create_model("local-dir:{dst}")')
    return 0


__all__ = ["export", "model_card"]
