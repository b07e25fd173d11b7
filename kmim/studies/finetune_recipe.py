"""The finetune-recipe study's verdict rule and tables, written before any of its arms ran. finetune-recipe: the
candidate with the best held-out top-1 wins (ties: the first listed); the test split is never read."""

from __future__ import annotations

from pathlib import Path
from typing import Any


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
