"""`kmim study NAME --out DIR --status`: counts, means and times from the records alone; nothing is written."""

import json

from kmim.cli import main
from kmim.studies.common import Arm
from kmim.studies.status import arm_seconds, group_table, status_lines

ARMS = [Arm(f"{g}-s{s}", g, (), s) for s in (0, 1) for g in ("a", "b")]


def rec(arm: str, knn: float, *, train_s: float = 60.0, finetune: float | None = None) -> dict[str, object]:
    r: dict[str, object] = {"arm": arm, "knn_top1": knn, "train_s": train_s, "eval_s": 30.0}
    if finetune is not None:
        r["finetune_top1"], r["finetune_s"] = finetune, 90.0
    return r


def test_group_table_averages_the_done_seeds_of_each_group_in_the_study_order():
    records = {"a-s0": rec("a-s0", 40.0, finetune=60.0), "a-s1": rec("a-s1", 42.0), "b-s0": rec("b-s0", 50.0)}
    rows = group_table(ARMS, records)
    assert rows[0] == "| group | seeds done | kNN | fine-tuning |"  # only the columns some record has
    assert rows[2] == "| a | 2/2 | 41.0 ± 1.4 | 60.0 |"  # mean 41, sample sd sqrt(2) = 1.41; one fine-tuned seed
    assert rows[3] == "| b | 1/2 | 50.0 | – |"
    assert group_table(ARMS, {})[:3] == ["| group | seeds done |", "|---|---:|", "| a | 0/2 |"]  # nothing done yet


def test_status_counts_arms_time_and_the_time_left_and_gives_no_verdict_until_complete():
    records = {"a-s0": rec("a-s0", 40.0, train_s=150.0), "b-s0": rec("b-s0", 50.0, train_s=270.0)}
    assert arm_seconds(records["a-s0"]) == 180.0  # 150 pretraining + 30 evaluation
    lines = status_lines("x", ARMS, records)
    # two arms of 3 and 5 min: 8 min, 4 per arm, 2 left -> 8 min
    assert lines[0] == "x: 2 of 4 arms done (8 min of arms, 4 min per arm; about 8 min left at that rate)"
    assert lines[1] == "next: a-s1 (then 1 more)"
    assert lines[-1].startswith("partial: no verdict")
    full = {a.name: rec(a.name, 45.0) for a in ARMS}
    done = status_lines("x", ARMS, full)
    assert done[0] == "x: 4 of 4 arms done (6 min of arms, 2 min per arm)" and done[-1].startswith("complete")
    assert status_lines("x", ARMS, {})[0] == "x: 0 of 4 arms done"


def test_the_status_command_reads_the_records_writes_nothing_and_refuses_a_folder_of_another_design(tmp_path, capsys):
    out = tmp_path / "k"
    (out / "records").mkdir(parents=True)
    (out / "records" / "pixels-k10-s0.json").write_text(json.dumps(rec("pixels-k10-s0", 42.8)))
    before = sorted(p.name for p in out.rglob("*"))
    assert main(["study", "k-ablation", "--out", str(out), "--status"]) == 0
    text = capsys.readouterr().out
    assert "k-ablation: 1 of 12 arms done" in text and "| K=10 | 1/2 | 42.8 |" in text
    assert sorted(p.name for p in out.rglob("*")) == before  # nothing written
    (out / "records" / "online-k200-s0.json").write_text("{}")
    assert main(["study", "k-ablation", "--out", str(out), "--status"]) == 2
    assert "online-k200-s0" in capsys.readouterr().err
