"""The studies, each in its own file with its arms, verdict rules and tables, all written before any of its arms ran
(each rule states its test in its text): tcas_vs_probe, k_ablation, vs_mae, finetune_recipe, online
(online-vs-offline's second design; its extra evaluation too). This module is the registry `kmim study` reads;
adding a study is one file and a line in each table here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from kmim.studies import finetune_recipe, k_ablation, online, tcas_vs_probe, vs_mae
from kmim.studies.common import Arm, Layout

ARMS: dict[str, Callable[[Layout], list[Arm]]] = {  # dependencies first: feature tokenizers read earlier arms' runs
    "tcas-vs-probe": tcas_vs_probe.arms,
    "k-ablation": k_ablation.arms,
    "vs-mae": vs_mae.arms,
    "finetune-recipe": finetune_recipe.arms,
    "online-vs-offline": online.arms,
}

RULES: dict[str, Callable[[list[dict[str, Any]]], list[str]]] = {
    "tcas-vs-probe": tcas_vs_probe.tcas_rules,
    "k-ablation": k_ablation.k_rules,
    "vs-mae": vs_mae.vs_mae_rules,
    "finetune-recipe": finetune_recipe.recipe_rules,
    "online-vs-offline": online.rules,
}
TABLES: dict[str, Callable[[list[dict[str, Any]], Path], list[str]]] = {
    "tcas-vs-probe": tcas_vs_probe.tcas_tables,
    "k-ablation": k_ablation.k_tables,
    "vs-mae": vs_mae.vs_mae_tables,
    "finetune-recipe": finetune_recipe.recipe_tables,
    "online-vs-offline": online.tables,
}
