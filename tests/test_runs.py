"""The run lifecycle (kmim.runs.RunDir): status, what start and reopen write and forget, the refusals."""

import json

import pytest

from kmim.config import load_config
from kmim.errors import KmimError
from kmim.runs import RunDir, check_resume


def test_lifecycle_new_start_unfinished_reopen_finished(tmp_path):
    cfg = load_config(None, [])
    run = RunDir(tmp_path / "r")
    assert run.status() == "new"
    run.check_new(cfg)
    written = []
    run.start(cfg, inputs=lambda: written.append("inputs"), scan={"files": 3})
    assert written == ["inputs"] and (run.path / "config.yaml").is_file() and (run.path / "image_scan.json").is_file()
    for epoch in range(3):
        run.log({"step": epoch, "epoch": epoch, "loss": 1.0})
        run.log({"epoch": epoch, "epoch_loss": 3.0 - epoch})
    run.checkpoints.mkdir()
    run.last.write_bytes(b"x")
    (run.checkpoints / ".last.pt.a1b2.tmp").write_bytes(b"")  # a kill mid-write (atomic_write's temp name)
    assert run.status() == "unfinished" and run.last_epoch_loss() == 1.0
    with pytest.raises(KmimError, match="already holds a run: pass --resume"):
        run.check_new(cfg)
    run.reopen(load_config(None, ["train.epochs=50"]), epoch=2)
    env = json.loads((run.path / "env.json").read_text())
    assert [r["epoch"] for r in env["resumes"]] == [2] and "git_sha" in env["resumes"][0] and "torch" in env
    assert run.commits() == list(dict.fromkeys([env["git_sha"], env["resumes"][0]["git_sha"]]))
    rows = [json.loads(x) for x in run.metrics.read_text().splitlines()]
    assert {r["epoch"] for r in rows} == {0, 1}  # epoch 2 is about to be redone
    assert "epochs: 50" in (run.path / "config.yaml").read_text()
    assert not (run.checkpoints / ".last.pt.a1b2.tmp").exists()
    run.write_results({"epochs": 50})
    assert run.status() == "finished" and run.read_results() == {"epochs": 50}


def test_a_folder_with_another_config_or_results_is_refused(tmp_path):
    run = RunDir(tmp_path / "r")
    run.start(load_config(None, []))
    run.check_new(load_config(None, []))  # the same config, killed before its first checkpoint: fine
    with pytest.raises(KmimError, match="was started with another config"):
        run.check_new(load_config(None, ["train.epochs=3"]))
    run.write_results({})
    with pytest.raises(KmimError, match=r"holds results \(results.json\) but no checkpoint"):
        run.check_new(load_config(None, []))
    run.check_new(load_config(None, ["train.epochs=3"]), overwrite=True)


def test_check_resume_names_what_a_resume_cannot_change():
    saved = load_config(None, [])
    from kmim.config import config_to_dict

    with pytest.raises(KmimError, match=r"--resume cannot change train.online"):
        check_resume(config_to_dict(saved), load_config(None, ["train.online.target_temp=0.1"]), 1)
    with pytest.raises(KmimError, match="train.epochs=1 is below the 2 epochs"):
        check_resume(config_to_dict(saved), load_config(None, ["train.epochs=1", "train.warmup_epochs=0"]), 2)


def test_a_run_saved_by_an_older_kmim_is_the_same_run(tmp_path):
    """Auto-resume compares configs under today's schema: a config.yaml written before a key existed (here the keys
    added on 2026-12-07) still matches the same settings, and another value does not."""
    import yaml

    cfg = load_config(None, [f"out_dir={tmp_path}", "name=old"])
    run = RunDir(tmp_path / "old")
    run.start(cfg)
    saved = yaml.safe_load((run.path / "config.yaml").read_text())
    for section, key in [
        ("model", "decoder"),
        ("model", "predict_fraction"),
        ("train", "keep_checkpoints"),
        ("data", "cache"),
        ("data", "class_list"),
    ]:
        del saved[section][key]
    for key in ("momentum_truncate", "positionwise_sk"):
        del saved["train"]["online"][key]
    (run.path / "config.yaml").write_text(yaml.safe_dump(saved))
    run.checkpoints.mkdir()
    run.last.write_bytes(b"x")
    assert run.same_run(cfg)
    assert not run.same_run(load_config(None, [f"out_dir={tmp_path}", "name=old", "train.epochs=41"]))


def test_the_same_run_ignores_where_it_and_its_data_live_and_carries_them(tmp_path):
    from kmim.runs import carry_neutral

    cfg = load_config(None, ["out_dir=runs", "data.root=/a"])
    run = RunDir(tmp_path / "r")
    run.start(cfg)
    run.checkpoints.mkdir()
    run.last.write_bytes(b"x")
    moved = load_config(None, ["out_dir=/elsewhere", "data.root=/b", "data.num_workers=1", "run.tensorboard=false"])
    assert run.same_run(moved) and not run.same_run(load_config(None, ["out_dir=runs", "train.seed=1"]))
    assert not run.same_run(load_config(None, ["out_dir=runs", "run.device=cpu"]))  # a device can move the numbers
    carried = carry_neutral(cfg, moved)
    assert (carried.out_dir, carried.data.root, carried.data.num_workers, carried.run.tensorboard) == (
        "/elsewhere",
        "/b",
        1,
        False,
    )
    assert carried.train == cfg.train and cfg.data.root == "/a"  # the checkpoint's config itself is unchanged
