"""`kmim study` on the tiny synthetic dataset with 1-epoch runs: every file, and a resume that redoes nothing."""

import csv
import json
import re

import pytest

import kmim.studies.study as S
from kmim.cli import main
from kmim.studies.finetune_recipe import RECIPES
from kmim.studies.vs_mae import FINETUNE_SEEDS
from tests.conftest import TINY

FAST = [
    *TINY,
    "data.synthetic_per_class=24",
    "data.synthetic_classes=4",
    "train.epochs=1",
    "train.warmup_epochs=0",
    "train.save_every=1",
    "tokenizer.batch_size=16",
    "tokenizer.vq.epochs=1",
    "tokenizer.supervised.epochs=1",
    "eval.linear.epochs=3",
    "finetune.epochs=1",
    "finetune.warmup_epochs=0",
    "finetune.batch_size=8",
    "eval.attentive.epochs=1",
    "eval.attentive.warmup_epochs=0",
    "eval.attentive.batch_size=8",
    "eval.attentive.lrs=[1e-3]",
    "eval.attentive.weight_decays=[0.0]",
]


# ~15 s each on 2 cores: vs-mae (curves included) stays in the default suite
SLOW_STUDIES = [pytest.param(s, marks=pytest.mark.slow) for s in ("tcas-vs-probe", "k-ablation", "online-vs-offline")]


@pytest.mark.parametrize("study", ["vs-mae", *SLOW_STUDIES])
def test_study_writes_every_file(study, tmp_path, capsys):
    out = tmp_path / study
    assert main(["study", study, "--out", str(out), "-q", *FAST]) == 0
    for f in ("report.md", "results.csv"):
        assert (out / f).is_file()
    assert list(out.glob("*.png"))
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == len(S.arms(study, out))
    report = (out / "report.md").read_text()
    sha = str(json.loads(next((out / "records").glob("*.json")).read_text())["code"]["evaluated"])[:7]
    assert f"Code: pretrained under {sha}" in report and "records do not say" not in report
    verdicts = report.split("## Verdicts", 1)[1].split("\n## ", 1)[0]
    words = re.findall(r"\*\*(agree|disagree|not resolved)\*\*|: (agree|disagree|not resolved)\b", verdicts)
    assert verdicts.count("\n- ") >= 1 and words, verdicts  # each verdict says one of the three words, whole
    if study == "vs-mae":  # every seed of each method is fine-tuned; every run has kNN and probe curves
        tuned = {r["arm"]: r["finetune_top1"] for r in rows}
        assert all((tuned[a.name] != "") == (a.seed in FINETUNE_SEEDS) for a in S.arms(study, out))
        assert "Fine-tuning (3 seeds)" in report and "## Linear probe vs epochs" in report
        assert (out / "runs" / "kmim-pixels-k200-s0-finetune" / "results.json").is_file()
    if study == "online-vs-offline":  # attentive probe for every arm, the teacher of the online ones, their curves
        recs = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
        assert all(r["attentive_top1"] is not None and set(r["pools"]["student"]) == {"cls", "mean"} for r in recs)
        online = [r for r in recs if r["target"] == "online-clusters"]
        assert len(online) == 6 and all(r["networks"] == ["student", "teacher"] for r in online)
        assert all(bool(r["tcas_curve"]) == (r["target"] == "online-clusters") for r in recs)
        assert "student − kmim-pixels-k50 = " in verdicts and (out / "online-over-epochs.png").is_file()


@pytest.mark.slow  # >= 7 s on 2 cores; runs in make test-all
def test_interrupted_study_resumes_without_redoing_finished_arms(tmp_path, monkeypatch):
    out = tmp_path / "k"
    real, calls = S.run_arm, []

    def stop_after_two(arm, *args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed between runs
        calls.append(arm.name)
        return real(arm, *args, **kwargs)

    monkeypatch.setattr(S, "run_arm", stop_after_two)
    assert main(["study", "k-ablation", "--out", str(out), "-q", *FAST]) == 130
    done = sorted(p.stem for p in (out / "records").glob("*.json"))
    assert done == sorted(calls) and len(done) == 2
    calls.clear()
    monkeypatch.setattr(S, "run_arm", lambda arm, *a, **k: calls.append(arm.name) or real(arm, *a, **k))
    assert main(["study", "k-ablation", "--out", str(out), "-q", *FAST]) == 0
    assert set(calls).isdisjoint(done) and len(calls) == len(S.arms("k-ablation", out)) - 2
    assert json.loads((out / "records" / f"{done[0]}.json").read_text())["arm"] == done[0]


def test_a_study_continues_only_under_its_own_config(tmp_path, capsys):
    """A rerun with other overrides is refused in one line naming the field; it trains nothing, rewrites nothing."""
    out = tmp_path / "k"
    S.run_arm(S.arms("k-ablation", out)[0], out, None, overrides=FAST, curve=False, progress=False)  # one finished arm
    report_before = sorted(p.name for p in out.iterdir())
    capsys.readouterr()
    assert main(["study", "k-ablation", "--out", str(out), "-q", *FAST, "train.epochs=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds arm pixels-k10-s0 run with train.epochs=1, this command gives 3" in err
    assert sorted(p.name for p in out.iterdir()) == report_before and not (out / "report.md").exists()
    rec = json.loads((out / "records" / "pixels-k10-s0.json").read_text())
    assert rec["tokenizer_seed"] == 0 and rec["tokenizer_inertia"] > 0
    assert rec["code"]["pretrained"] == [rec["code"]["evaluated"]]  # the code that trained and evaluated the arm
    seed1 = S.arm_config(S.arms("k-ablation", out)[6], out, None, overrides=FAST)
    assert (seed1.train.seed, seed1.tokenizer.seed) == (1, 1)  # the seed spread includes the tokenizer's fit


def test_the_arms_commands_train_the_runs_that_the_study_then_only_evaluates(tmp_path, capsys, monkeypatch):
    """`--commands` prints each arm's `kmim pretrain` (to run under torchrun); the study, rerun in one process,
    finds those finished runs, trains nothing more and evaluates them."""
    import shlex

    out, real = tmp_path / "k", S.arms
    monkeypatch.setattr(S, "arms", lambda study, out, lay=None: real(study, out, lay)[:1])  # one arm: pixels-k10-s0
    assert main(["study", "k-ablation", "--out", str(out), "--commands", *FAST]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kmim pretrain ") and "name=pixels-k10-s0" in lines[0]
    assert not out.exists()  # printing ran nothing
    capsys.readouterr()
    assert main(["study", "vs-mae", "--out", str(tmp_path / "v"), "--commands", *FAST]) == 0
    vs = capsys.readouterr().out.strip().splitlines()  # the arm's fine-tuning beside its pretraining
    assert vs[:2] == [vs[0], f"kmim finetune {tmp_path / 'v' / 'runs' / 'kmim-pixels-k200-s0'}"]
    assert main([*shlex.split(lines[0])[1:], "-q"]) == 0
    metrics = (out / "runs" / "pixels-k10-s0" / "metrics.jsonl").read_text()
    rec = S.run_arm(
        S.arms("k-ablation", out)[0], out, None, overrides=FAST, curve=False, progress=False
    )  # as the study
    assert (out / "runs" / "pixels-k10-s0" / "metrics.jsonl").read_text() == metrics  # not trained again
    assert rec["knn_top1"] >= 0 and (out / "records" / "pixels-k10-s0.json").is_file()


@pytest.mark.slow  # >= 7 s on 2 cores; runs in make test-all
def test_the_finetune_recipe_is_chosen_on_held_out_train_of_random_init_encoders(tmp_path, capsys):
    out = tmp_path / "recipe"
    assert main(["study", "finetune-recipe", "--out", str(out), "-q", *FAST]) == 0
    recs = [json.loads((out / "records" / f"{name}.json").read_text()) for name in RECIPES]
    assert all(r["config"]["finetune"]["holdout"] == 0.1 for r in recs)
    for r in recs:  # evaluated on 10 % of the 96 training images, never on the test split
        res = json.loads((out / "runs" / r["arm"] / "results.json").read_text())
        assert "held-out 10%" in res["evaluated_on"] and "(10 images)" in res["evaluated_on"]
        assert res["source"] == "random-init (seed 0)"
    best = max(recs, key=lambda r: r["held_out_top1"])
    report = (out / "report.md").read_text()
    assert f"Chosen recipe: **{best['arm']}**" in report


def _tcas_record(group: str, seed: int, tcas: float | None, knn: float) -> dict:
    return {
        "arm": f"{group}-s{seed}",
        "group": group,
        "seed": seed,
        "tcas": tcas,
        "nmi": None if tcas is None else 1.0 - tcas,
        "knn_top1": knn,
        "linear_probe_top1": knn + 10.0,
        "lowshot_top1": knn - 10.0,
        "lowshot_std": 1.0,
        "n_test": 1000,
    }


def test_tcas_rules_put_one_point_per_tokenizer_at_its_seed_mean(tmp_path):
    from kmim.studies.tcas_vs_probe import _tcas_rows, tcas_rules, tcas_tables

    # five tokenizers, accuracy falling with TCAS; two seeds each at +-1 pt; an MAE arm without TCAS
    recs = [_tcas_record(f"t{i}", s, 0.2 * i + 0.01 * s, 80.0 - 5 * i + (2 * s - 1)) for i in range(5) for s in (0, 1)]
    recs += [_tcas_record("mae", s, None, 70.0) for s in (0, 1)]
    rows = _tcas_rows(recs)
    assert [r["arm"] for r in rows] == ["t0", "t1", "t2", "t3", "t4"] and all(r["n"] == 2 for r in rows)
    assert rows[1]["tcas"] == pytest.approx(0.205) and rows[1]["knn_top1"] == pytest.approx(75.0)
    assert rows[1]["sd_knn_top1"] == pytest.approx(2**0.5)  # sd of 74 and 76
    lines = tcas_rules(recs)
    assert lines[0].startswith("kNN: Spearman(TCAS, top-1) = -1.00") and "over 5 tokenizers: **agree**" in lines[0]
    assert "Per seed: seed 0 -1.00, seed 1 -1.00." in lines[0]
    assert lines[-1].endswith(
        "2 seeds per tokenizer, mean seed sd kNN 1.4, linear probe 1.4, low-shot (10/class) 1.4 pt."
    )
    table = tcas_tables(recs, tmp_path)
    assert "| t1 | 2 | 0.2050 ± 0.0071 | 0.7950 ± 0.0071 | 75.0 ± 1.4 | 85.0 ± 1.4 | 65.0 ± 1.4 |" in table
    assert "| mae | 2 | – | – | 70.0 ± 0.0 | 80.0 ± 0.0 | 60.0 ± 0.0 |" in table
    assert (tmp_path / "tcas-vs-accuracy.png").is_file()


def test_tcas_vs_probe_has_two_seeds_and_each_feature_arm_reads_its_own_seed(tmp_path):
    from kmim.studies.study import arms

    a = arms("tcas-vs-probe", tmp_path)
    assert len(a) == 22 and {x.seed for x in a} == {0, 1} and a[0].name == "mae-normpix-s0"
    feat = {x.name: x.overrides[-1] for x in a if x.group in ("mae-features-k200", "kmim-features-k200")}
    assert feat["mae-features-k200-s1"] == f"tokenizer.encoder={tmp_path / 'runs' / 'mae-normpix-s1'}"
    assert feat["kmim-features-k200-s0"] == f"tokenizer.encoder={tmp_path / 'runs' / 'pixels-k200-s0'}"
    names = [x.name for x in a]  # the runs a feature tokenizer reads come earlier
    assert names.index("pixels-k200-s1") < names.index("kmim-features-k200-s1")


@pytest.mark.slow  # ~110 s on 2 cores; runs in make test-all
def test_a_study_under_torchrun_gives_the_records_of_one_process(tmp_path):
    """2 gloo processes run tcas-vs-probe's 22 arms together (the fits rank 0 does alone, vq, the supervised encoder
    and the oracles, included) and rank 0 alone writes: the accuracies, TCAS and NMI of the 1-process study."""
    import os
    import subprocess
    import sys

    args = ["study", "tcas-vs-probe", "-q", *FAST, "run.device=cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", "-m", "kmim"]
    two = subprocess.run(
        [*torchrun, *args[:2], "--out", str(tmp_path / "two"), *args[2:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote ") == 1  # rank 0 prints
    assert main([*args[:2], "--out", str(tmp_path / "one"), *args[2:]]) == 0
    keys = ("knn_top1", "linear_probe_top1", "lowshot_top1", "tcas", "nmi")
    one = sorted((tmp_path / "one" / "records").glob("*.json"))
    assert len(one) == 22
    for path in one:
        a, b = json.loads(path.read_text()), json.loads((tmp_path / "two" / "records" / path.name).read_text())
        assert [a[k] for k in keys] == [b[k] for k in keys], path.name


def test_the_main_k_comes_from_the_preset_and_names_the_arms(tmp_path):
    """configs/studies/imagenette64.yaml sets K = 50: vs-mae's K-MIM and HOG arms, the feature tokenizers and the
    first pixel K of tcas-vs-probe are at 50, its second pixel K 200; the mnist5k presets keep K = 200 and 50."""
    lay = S.layout(tmp_path, "configs/studies/imagenette64.yaml", None)
    assert lay.k == 50 and lay.runs == tmp_path / "runs" and not lay.shared
    groups = {a.group for a in S.arms("vs-mae", tmp_path, lay)}
    assert groups == {"kmim-pixels-k50", "mae-normpix", "mae-raw", "kmim-hog-k50"}
    tcas = {a.group for a in S.arms("tcas-vs-probe", tmp_path, lay)}
    assert {"pixels-k50", "pixels-k200", "hog-k50", "kmim-features-k50", "class-wise-k50"} <= tcas
    assert S.layout(tmp_path, "configs/studies/mnist5k-40ep.yaml", None).k == 200


def test_a_shared_pool_trains_a_run_two_studies_have_once(tmp_path):
    """With --runs POOL, k-ablation's pixels-k50-s0 and tcas-vs-probe's pixels-k50-s0 are one run, and vs-mae's
    K-MIM PIXEL arm at K = 50 would read the same folder; each study still writes its own record."""
    pool = tmp_path / "pool"
    k_out, t_out = tmp_path / "k", tmp_path / "t"
    k_lay, t_lay = S.layout(k_out, None, str(pool)), S.layout(t_out, None, str(pool))
    k_arm = next(a for a in S.arms("k-ablation", k_out, k_lay) if a.name == "pixels-k50-s0")
    t_arm = next(a for a in S.arms("tcas-vs-probe", t_out, t_lay) if a.name == "pixels-k50-s0")
    S.run_arm(k_arm, k_out, None, overrides=FAST, curve=False, progress=False, lay=k_lay)
    metrics = (pool / "pixels-k50-s0" / "metrics.jsonl").read_text()
    rec = S.run_arm(t_arm, t_out, None, overrides=FAST, curve=False, progress=False, lay=t_lay)
    assert (pool / "pixels-k50-s0" / "metrics.jsonl").read_text() == metrics  # reused, not trained again
    assert (k_out / "records" / "pixels-k50-s0.json").is_file() and (t_out / "records" / "pixels-k50-s0.json").is_file()
    assert rec["config"]["out_dir"] == str(pool) and not (t_out / "runs").exists()
    vs = {
        a.name: k_lay.run_name(a) for a in S.arms("vs-mae", tmp_path / "v", S.layout(tmp_path / "v", None, str(pool)))
    }
    assert vs["kmim-pixels-k200-s1"] == "pixels-k200-s1" and vs["kmim-hog-k200-s0"] == "hog-k200-s0"


def test_a_study_continues_under_another_data_root(tmp_path):
    """Where the data lives (data.root, workers, the RAM cache) does not change the numbers: not compared."""
    arm = S.arms("k-ablation", tmp_path)[0]
    cfg = S.arm_config(arm, tmp_path, None, overrides=FAST)
    record = {"config": {**S.config_to_dict(cfg), "data": {**S.config_to_dict(cfg)["data"], "num_workers": 3}}}
    S.check_same_config(arm, cfg, record, out=tmp_path)
    moved = {"config": {**S.config_to_dict(cfg), "out_dir": "/somewhere/else/runs"}}  # a study folder moved
    S.check_same_config(arm, cfg, moved, out=tmp_path)


def test_an_arm_under_a_lars_preset_is_probed_as_kmim_probe_does(tmp_path):
    """The ImageNet study presets set eval.probe=lars: the arm's linear probe is MAE's LARS probe through the
    encoder (split over processes, resumable), as `kmim probe` runs it, not the AdamW head on cached features."""
    lars = ["eval.probe=lars", "eval.lars.epochs=2", "eval.lars.warmup_epochs=0", "eval.lars.batch_size=8"]
    out = tmp_path / "k"
    rec = S.run_arm(S.arms("k-ablation", out)[0], out, None, overrides=[*FAST, *lars], curve=False, progress=False)
    run = out / "runs" / "pixels-k10-s0"
    assert main(["probe", str(run), "-q", *lars]) == 0
    assert rec["linear_probe"] == "lars"
    assert rec["linear_probe_top1"] == json.loads((run / "evaluations.json").read_text())["probe"]["linear_probe_top1"]


@pytest.mark.parametrize(
    "extra, want",
    [
        (["data.synthetic_per_class=12"], "tokenizer.k=1000 exceeds the 768 training patches (48 images x 16 patches)"),
        (["data.synthetic_per_class=6"], "arm pixels-k10-s0: a class has 6 training images; this study needs 10"),
    ],
)
def test_a_study_checks_what_every_arm_needs_of_the_data_before_the_first_trains(extra, want, tmp_path, capsys):
    """k-ablation's K = 1000 arm on 48 tiny images (768 patches), or low-shot's 10 images per class on 6: one line
    at the door, before the K = 10 arm trains for nothing."""
    out = tmp_path / "k"
    assert main(["study", "k-ablation", "--out", str(out), "-q", *FAST, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and want in err[0], err
    assert not (out / "runs").exists() and not (out / "records").exists()


def test_an_arm_says_its_stages_in_plain_lines_only_with_progress(capsys):
    """A study's log shows each evaluation stage as a line (bars alone leave minutes of silence in a log file)."""
    S.say(True, "evaluated: kNN 41.0")
    S.say(False, "not shown")
    assert capsys.readouterr().out == "  evaluated: kNN 41.0\n"


def test_a_recorded_run_that_a_later_arm_reads_is_pretrained_again_where_it_is_missing(tmp_path, monkeypatch):
    import kmim.studies.demo as D

    lay = S.layout(tmp_path, None)
    todo = S.arms("tcas-vs-probe", tmp_path, lay)
    built = []
    monkeypatch.setattr(D, "pretrain_or_resume", lambda cfg, progress: built.append(cfg.name))
    reader = next(a for a in todo if a.name.startswith("mae-features") and a.seed == 1)

    def rebuild(arm):
        S.rebuild_read_runs(arm, todo, tmp_path, config=None, overrides=[], lay=lay, progress=False)

    rebuild(reader)  # the MAE run is neither recorded nor here: the study trains it as an arm of its own
    assert built == []
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "mae-normpix-s1.json").write_text("{}")
    rebuild(reader)  # recorded (another machine), its folder missing here: pretrained again
    rebuild(next(a for a in todo if a.name.startswith("hog")))  # reads no run
    assert built == ["mae-normpix-s1"]
    (lay.runs / "mae-normpix-s1" / "checkpoints").mkdir(parents=True)
    (lay.runs / "mae-normpix-s1" / "checkpoints" / "last.pt").write_bytes(b"weights")
    rebuild(reader)  # here: read as it is
    assert built == ["mae-normpix-s1"]
