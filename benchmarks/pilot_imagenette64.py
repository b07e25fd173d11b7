"""The Imagenette-64 pilot (issue 27): MAE alone, seed 0, fixes the pretraining budget of the imagenette64 presets.

Rule, fixed before it ran: the budget is the preset's (train.epochs) when (a) one pretraining arm, training plus its
evaluation (kNN, linear probe, low-shot), takes at most 15 min on this 2-core box and (b) MAE's final kNN top-1 is at
least 10 points above the random-init floor (mean of 3 untrained encoders). kNN at every saved checkpoint shows
where the curve stands, for the CLS token and the mean of the patch tokens (eval.pool). K-MIM is not run here.
The training time is the run's own (results.json), so rerunning the script on a finished run re-evaluates only.

    python benchmarks/pilot_imagenette64.py --data-root /data/imagenette-72 --out docs/results/pilot-imagenette64

Resumable (the run continues from its checkpoint); writes OUT/report.md and OUT/results.json (the run folder goes
to runs/pilot-imagenette64, not committed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from kmim.eval import load_encoder, random_encoder, split_features
from kmim.eval.knn import knn_top1
from kmim.resolve import load_run_config
from kmim.runinfo import environment, write_json, write_text
from kmim.runs import RunDir
from kmim.studies.demo import pretrain_or_resume
from kmim.studies.study import evaluate_arm

MAX_ARM_S, MIN_GAIN = 15 * 60, 10.0


POOLS = ("cls", "mean")


def _knn(encoder: object, cfg: object) -> dict[str, float]:
    """kNN top-1 of the CLS token and of the mean patch token."""
    (tr, try_), (te, tey), n = split_features(encoder, cfg, progress=False)  # type: ignore[arg-type]
    e = cfg.eval  # type: ignore[attr-defined]
    return {
        p: knn_top1((tr[p], try_), (te[p], tey), num_classes=n, k=e.knn.k, temperature=e.knn.temperature) for p in POOLS
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--out", default="docs/results/pilot-imagenette64")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    ov = [f"data.root={args.data_root}", "out_dir=runs/pilot-imagenette64", "name=mae-s0", *args.overrides]
    cfg = load_run_config("configs/imagenette64_mae.yaml", ov)
    run = Path(cfg.out_dir) / cfg.name
    if not (run / "results.json").is_file():  # a finished run is re-evaluated only (its eval.* may have changed)
        run = pretrain_or_resume(cfg, progress=True)
    train_s = float(json.loads((run / "results.json").read_text())["train_wall_s"])
    t1 = time.perf_counter()
    rec = evaluate_arm(cfg, run, curve=False, progress=False)
    eval_s = time.perf_counter() - t1
    curve = [[int(c.stem.split("-")[1]), _knn(load_encoder(c)[0], cfg)] for c in RunDir(run).numbered_checkpoints()]
    floors = [_knn(random_encoder(cfg, s), cfg) for s in (0, 1, 2)]
    floor = [f[cfg.eval.pool] for f in floors]
    fl = float(np.mean(floor))
    arm_s = train_s + eval_s
    res = {
        "epochs": cfg.train.epochs,
        "knn_top1": rec["knn_top1"],
        "linear_probe_top1": rec["linear_probe_top1"],
        "lowshot_top1": rec["lowshot_top1"],
        "knn_curve": curve,
        "random_init_knn": floor,
        "random_init_knn_by_pool": floors,
        "pool": cfg.eval.pool,
        "train_s": round(train_s, 1),
        "eval_s": round(eval_s, 1),
        "passes_time": arm_s <= MAX_ARM_S,
        "passes_floor": rec["knn_top1"] >= fl + MIN_GAIN,
        "env": environment(),
    }
    out = Path(args.out)
    write_json(out / "results.json", res)
    env = res["env"]
    lines = [
        "# Imagenette-64 pilot: MAE alone fixes the budget",
        "",
        f"Command: `python benchmarks/pilot_imagenette64.py --data-root DIR {' '.join(args.overrides)}` (preset "
        f"configs/imagenette64_mae.yaml, seed 0). kmim {env['kmim']}, git {env['git_sha']}, {env['cpu']}, "
        f"{env['threads']} threads.",
        "",
        f"Rule (fixed before the run): one arm <= {MAX_ARM_S // 60} min (training + evaluation) and MAE's kNN >= "
        f"the random-init floor + {MIN_GAIN:.0f} pt.",
        "",
        f"Features: eval.pool={cfg.eval.pool} (the preset's).",
        "",
        "| epochs | train min | eval min | kNN | linear probe | low-shot | random-init kNN (3 seeds) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {cfg.train.epochs} | {train_s / 60:.1f} | {eval_s / 60:.1f} | {rec['knn_top1']:.1f} | "
        f"{rec['linear_probe_top1']:.1f} | {rec['lowshot_top1']:.1f} | {fl:.1f} ± {np.std(floor, ddof=1):.1f} |",
        "",
        "kNN by pool at the saved checkpoints (random init: mean of 3 seeds):",
        "",
        "| pool | " + " | ".join(f"epoch {e}" for e, _ in curve) + " | random init |",
        "|---|" + "---:|" * (len(curve) + 1),
        *(
            f"| {p} | " + " | ".join(f"{v[p]:.1f}" for _, v in curve) + f" | {np.mean([f[p] for f in floors]):.1f} |"
            for p in POOLS
        ),
        "",
        f"Time rule: **{'met' if res['passes_time'] else 'missed'}** ({arm_s / 60:.1f} min). Floor rule: "
        f"**{'met' if res['passes_floor'] else 'missed'}** (gain {rec['knn_top1'] - fl:+.1f} pt).",
        "",
    ]
    write_text(out / "report.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
