"""`kmim study NAME --out DIR --status`: where a running or stopped study stands, read from its records alone
(nothing is trained, evaluated or written): the arms done and left, their wall time, and the mean ± sd over the
seeds done of each group's scores. No verdict: a study's rules are applied to its complete set of arms only, in
report.md when the last arm ends (a partial mean is not a result)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kmim.studies.common import Arm, cell

COLUMNS = (  # (record key, header); a column is shown when any record has it
    ("tcas", "TCAS"),
    ("knn_top1", "kNN"),
    ("linear_probe_top1", "linear probe"),
    ("lowshot_top1", "low-shot"),
    ("attentive_top1", "attentive"),
    ("finetune_top1", "fine-tuning"),
    ("held_out_top1", "held-out"),
    ("teacher_knn_top1", "teacher kNN"),
    ("teacher_linear_probe_top1", "teacher probe"),
)


def read_records(out: Path) -> dict[str, dict[str, Any]]:
    """{arm name: record} of the study folder's finished arms."""
    folder = out / "records"
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def arm_seconds(rec: dict[str, Any]) -> float:
    """An arm's wall time: pretraining + evaluation + fine-tuning, as its record says (the time of the process that
    wrote it: an arm whose run was trained in an earlier session or another study counts its evaluation only)."""
    return float(sum(rec.get(k) or 0.0 for k in ("train_s", "eval_s", "finetune_s")))


def _cell(values: list[float], key: str) -> str:
    """mean ± sample sd over the done seeds (the mean alone for one, "–" for none); TCAS to 3 decimals."""
    return cell(values, ".3f" if key == "tcas" else ".1f") if values else "–"


def group_table(todo: list[Arm], records: dict[str, dict[str, Any]]) -> list[str]:
    """One markdown row per group in the study's order: seeds done / declared, then each shown column's mean ± sd
    over the done seeds."""
    groups = list(dict.fromkeys(a.group for a in todo))
    done = [records[a.name] for a in todo if a.name in records]
    cols = [(k, h) for k, h in COLUMNS if any(r.get(k) is not None for r in done)]
    lines = [
        "| " + " | ".join(["group", "seeds done", *(h for _, h in cols)]) + " |",
        "|---|---:|" + "---:|" * len(cols),
    ]
    for g in groups:
        arms = [a for a in todo if a.group == g]
        recs = [records[a.name] for a in arms if a.name in records]
        cells = [_cell([float(r[k]) for r in recs if r.get(k) is not None], k) for k, _ in cols]
        lines.append("| " + " | ".join([g, f"{len(recs)}/{len(arms)}", *cells]) + " |")
    return lines


def status_lines(study: str, todo: list[Arm], records: dict[str, dict[str, Any]]) -> list[str]:
    """The status of `study`: done / declared arms, wall time so far and, at the mean time of the done arms, the
    time left; the next arm; the group table; what is not a verdict."""
    done = [a for a in todo if a.name in records]
    left = [a for a in todo if a.name not in records]
    spent = [arm_seconds(records[a.name]) for a in done]
    head = f"{study}: {len(done)} of {len(todo)} arms done"
    if spent:
        per = sum(spent) / len(spent)
        head += f" ({sum(spent) / 60:.0f} min of arms, {per / 60:.0f} min per arm"
        head += f"; about {per * len(left) / 60:.0f} min left at that rate)" if left else ")"
    lines = [head]
    if left:
        lines.append(f"next: {left[0].name}" + (f" (then {len(left) - 1} more)" if len(left) > 1 else ""))
    lines += ["", *group_table(todo, records), ""]
    if left:
        lines.append("partial: no verdict until every arm has run (the rules apply to the complete study)")
    else:
        lines.append("complete: the verdicts are in report.md (rerun the study command if it is missing)")
    return lines
