"""The online-vs-offline study's declared arms, its stale-folder guard and its verdict rules on hand-made records."""

import json

import pytest

import kmim.studies.study as S
from kmim.config import ModelConfig
from kmim.errors import KmimError
from kmim.studies import online
from kmim.studies.common import Layout


def test_arms_are_the_declared_design(tmp_path):
    arms = S.arms("online-vs-offline", tmp_path)
    assert len(arms) == 18 and {a.seed for a in arms} == {0, 1}
    by = {a.name: a.overrides for a in arms}
    faithful = by["online-k50-s0"]
    assert {"model.head=cosine", "train.online.momentum=0.99", "tokenizer.k=50"} <= set(faithful)
    assert "train.health_images=1000" in faithful and "train.health_images=1000" not in by["mae-normpix-s0"]
    cross = by["kmim-pixels-k50-cross-s1"]  # mnist-tiny: 128 wide, 4 deep, 4 heads -> predictor 128 x 2
    assert {"model.decoder=cross", "model.decoder_dim=128", "model.decoder_depth=2", "model.decoder_heads=4"} <= set(
        cross
    )
    assert "train.online.positionwise_sk=false" in by["online-k50-allsk-s0"]
    assert f"tokenizer.encoder={tmp_path / 'runs' / 'mae-normpix-s1'}" in by["kmim-maefeat-k50-s1"]
    names = [a.name for a in arms]
    assert names.index("mae-normpix-s0") < names.index("kmim-maefeat-k50-s0")  # the feature tokenizer reads MAE


def test_in_a_shared_pool_the_round_runs_are_read_and_five_methods_added(tmp_path):
    lay = Layout(tmp_path / "pool", 50, shared=True, cross=online.cross_overrides(ModelConfig()))
    arms = S.arms("online-vs-offline", tmp_path, lay)
    groups = {a.group for a in arms}
    assert groups == {
        "mae-normpix",
        "kmim-pixels-k50",
        "online-k50",
        *(f"{g}-cross" for g in ("mae-normpix", "kmim-pixels-k50", "online-k50")),
    }
    runs = {a.name: lay.run_name(a) for a in arms}
    assert runs["mae-normpix-s1"] == "mae-normpix-s1" and runs["kmim-pixels-k50-s0"] == "pixels-k50-s0"
    assert runs["online-k50-cross-s0"] == "online-k50-cross-s0"


def test_a_folder_of_the_first_design_is_refused(tmp_path, capsys):
    from kmim.cli import main

    out = tmp_path / "ov"
    (out / "records").mkdir(parents=True)
    (out / "records" / "online-k200-s0.json").write_text("{}")
    with pytest.raises(KmimError, match=r"holds records of arms study online-vs-offline does not have \(online-k200"):
        S.check_records_belong("online-vs-offline", out, S.arms("online-vs-offline", out))
    assert main(["study", "online-vs-offline", "--out", str(out), "-q", "train.epochs=1"]) == 2
    assert "choose another --out" in capsys.readouterr().err
    assert sorted(p.name for p in out.rglob("*")) == ["online-k200-s0.json", "records"]


def _rec(group, seed, acc, teacher=None, used=0.5):
    r = {"group": group, "seed": seed, "n_test": 1000, "networks": ["student"]}
    r.update({k: acc for k, _ in online.METRICS})
    if teacher is not None:
        r["networks"].append("teacher")
        r.update({f"teacher_{k}": teacher for k, _ in online.METRICS})
        r["teacher_curve"] = [[1, 1.0, 50.0, 0.5, 10.0, 3.9], [2, used, 4.0, 0.2, 12.0, 3.0]]
    return r


def test_rules_compare_online_with_offline_decoders_networks_and_name_a_collapse():
    recs = []
    for s in (0, 1):
        recs += [_rec("online-k50", s, 60.0 + s, teacher=70.0 + s, used=0.05), _rec("kmim-pixels-k50", s, 65.0 + s)]
        recs += [_rec("mae-normpix", s, 60.5 + s), _rec("kmim-pixels-k50-cross", s, 75.0 + s)]
        recs += [_rec("online-k50-allsk", s, 60.0 + s, teacher=70.0 + s, used=0.5 + 0.1 * s)]
    lines = online.rules(recs)
    knn = next(x for x in lines if x.startswith("kNN, MAE decoder"))
    assert "student − kmim-pixels-k50 = -5.0 (SE 0.7): **offline ahead**" in knn
    assert "student − mae-normpix = -0.5 (SE 0.7): **not resolved**" in knn
    assert "teacher − kmim-pixels-k50 = +5.0 (SE 0.7): **online ahead**" in knn
    assert not any(x.startswith("kNN, cross predictor: online") for x in lines)  # no online-cross record yet
    dec = next(x for x in lines if x.startswith("kNN, cross predictor − MAE decoder"))
    assert "kmim-pixels-k50 +10.0 (SE 0.7): **cross ahead**" in dec
    assert any("online-k50, teacher − student: kNN +10.0 (SE 0.7): **teacher ahead**" in x for x in lines)
    assert any(x.startswith("Sinkhorn over all patches − position-wise: kNN (student) +0.0") for x in lines)
    assert any("online-k50: the teacher's argmax uses 5 % of the K ids" in x and "**collapsed**" in x for x in lines)
    assert any("online-k50-allsk: the teacher's argmax uses 50–60 % of" in x and "not collapsed" in x for x in lines)
    assert online.rules([_rec("mae-normpix", 0, 1.0)]) == ["No online arm has a record yet: no verdict."]


def test_tables_show_the_teacher_beside_the_student(tmp_path):
    recs = [_rec("online-k50", s, 60.0, teacher=70.0) for s in (0, 1)] + [_rec("mae-normpix", 0, 61.0)]
    for r in recs:
        pools = {p: {"knn": 1.0, "probe": 2.0} for p in ("cls", "mean")}
        r["pools"] = {n: pools for n in r["networks"]}
        r["tcas"] = r["nmi"] = None
    text = "\n".join(online.tables(recs, tmp_path))
    assert "| online-k50 | teacher | – | – | 70.0 ± 0.0 |" in text and "| mae-normpix | student |" in text
    assert "| online-k50 | 50 % | 4.0 | 20 % | 12.0 | 3.00 | – |" in text
    assert (tmp_path / "online-over-epochs.png").is_file()
    json.dumps(recs)  # records stay JSON


def test_a_networks_scores_are_kept_and_recomputed_for_another_encoder(tmp_path, monkeypatch):
    from kmim.config import RunConfig

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("{}\n")
    (run / "checkpoints" / "last.pt").write_bytes(b"weights")
    calls = []

    def fake(cfg, run_dir, network, *, device, progress):
        calls.append(network)
        return {"attentive_top1": 50.0 + len(calls), "pools": {"avg": {"knn": 1.5, "probe": 2.5}}}

    monkeypatch.setattr(online, "network_scores", fake)
    cfg = RunConfig()
    first = online.kept_scores(cfg, run, "student", device="cpu", progress=False)
    again = online.kept_scores(cfg, run, "student", device="cpu", progress=False)
    assert calls == ["student"] and again == first == {
        "attentive_top1": 51.0,
        "pools": {"avg": {"knn": 1.5, "probe": 2.5}},
    }
    assert json.loads((run / "probes" / "scores-student.json").read_text())["scores"] == first
    online.kept_scores(cfg, run, "teacher", device="cpu", progress=False)  # another network: its own file
    (run / "checkpoints" / "last.pt").write_bytes(b"other weights")  # another encoder file: recomputed
    assert online.kept_scores(cfg, run, "student", device="cpu", progress=False)["attentive_top1"] == 53.0
    assert calls == ["student", "teacher", "student"]
