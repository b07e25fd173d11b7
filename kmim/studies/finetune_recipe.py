"""The finetune-recipe study's verdict rule and tables, written before any of its arms ran. finetune-recipe: the
candidate with the best held-out top-1 wins (ties: the first listed); the test split is never read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kmim.studies.common import Arm, Layout

RECIPES = {  # the candidates, fixed before any ran (the preset's finetune section is the base)
    "lr5e-4-ld0.75": ("finetune.base_lr=5e-4", "finetune.layer_decay=0.75"),
    "lr1e-3-ld0.75": ("finetune.base_lr=1e-3", "finetune.layer_decay=0.75"),
    "lr2e-3-ld0.75": ("finetune.base_lr=2e-3", "finetune.layer_decay=0.75"),
    "lr1e-3-ld0.65": ("finetune.base_lr=1e-3", "finetune.layer_decay=0.65"),
    "lr1e-3-ld0.9": ("finetune.base_lr=1e-3", "finetune.layer_decay=0.9"),
    "lr1e-3-ld0.75-mixup": (
        "finetune.base_lr=1e-3",
        "finetune.layer_decay=0.75",
        "finetune.mixup=0.8",
        "finetune.cutmix=1.0",
    ),
}
HOLDOUT = 0.1  # the fraction of train each candidate is scored on


def arms(lay: Layout) -> list[Arm]:
    """Each candidate of RECIPES, fine-tuning a random-init encoder with HOLDOUT of train held out."""
    return [Arm(name, name, (*ov, f"finetune.holdout={HOLDOUT}")) for name, ov in RECIPES.items()]


def recipe_rules(records: list[dict[str, Any]]) -> list[str]:
    """The candidate with the best held-out top-1 wins (ties: the first listed); the test split is never read."""
    best = max(records, key=lambda r: r["held_out_top1"])  # max keeps the first of equal values
    return [
        f"Chosen recipe: **{best['arm']}** (held-out top-1 {best['held_out_top1']:.1f} on a random-init "
        f"encoder): {' '.join(best['overrides'])}. Put these in the preset's finetune section before vs-mae "
        "fine-tunes any pretrained encoder."
    ]


def recipe_tables(records: list[dict[str, Any]], out: Path) -> list[str]:
    lines = [
        "## Candidates (random-init encoder, 90 % of train; top-1 on the held-out 10 %)",
        "",
        "| candidate | overrides | held-out top-1 (last) | best epoch's |",
        "|---|---|---:|---:|",
    ]
    for r in records:
        lines.append(
            f"| {r['arm']} | `{' '.join(r['overrides'])}` | {r['held_out_top1']:.1f} | {r['held_out_best_top1']:.1f} |"
        )
    return lines
