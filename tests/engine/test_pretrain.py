import json
import shutil

import pytest
import torch

from kmim.config import load_config
from kmim.engine.checkpoint import load_checkpoint
from kmim.errors import KmimError
from tests.conftest import TINY
from tests.helpers import pretrain_run, resume_run


def test_pretrain_writes_a_complete_run_dir(tiny_overrides):
    cfg = load_config(None, [*tiny_overrides, "name=kmim"])
    run_dir, res = pretrain_run(cfg, progress=False)
    for f in ("config.yaml", "env.json", "metrics.jsonl", "results.json", "tokenizer.pt", "encoder.pt"):
        assert (run_dir / f).is_file(), f
    assert res["steps"] == 2 * (24 // 8) and res["images_seen"] == 2 * 24
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert ckpt["config"]["train"]["epochs"] == 2 and ckpt["tokenizer"]["meta"]["k"] == 8
    assert "git_sha" in json.loads((run_dir / "env.json").read_text())
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if "epoch_loss" in r] == [0, 1]


def test_resume_after_a_crash_matches_an_uninterrupted_run(tiny_overrides):
    three = [*tiny_overrides, "train.epochs=3", "train.save_every=2"]
    straight, res3 = pretrain_run(load_config(None, [*three, "name=a"]), progress=False)
    crashed, _ = pretrain_run(load_config(None, [*three, "name=b"]), progress=False)
    ckpts = crashed / "checkpoints"
    shutil.copy(ckpts / "checkpoint-0002.pt", ckpts / "last.pt")  # as if the run died during epoch 3
    assert load_checkpoint(ckpts / "last.pt")["train_state"]["step"] == 6
    _, res = resume_run(crashed, progress=False)
    assert res["steps"] == res3["steps"] == 9 and res["epochs"] == 3
    a = load_checkpoint(straight / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(ckpts / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x) for x in (crashed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if "epoch_loss" in r] == [0, 1, 2]  # the re-run epoch is logged once


def test_last_every_writes_last_pt_at_its_epochs_each_numbered_one_and_the_end(tiny_overrides, monkeypatch):
    """train.last_every=2 over 5 epochs (save_every=3): last.pt after epochs 2, 3 (numbered), 4 and 5 (the end)."""
    from kmim.engine import trainer

    written, real = [], trainer.save_checkpoint
    monkeypatch.setattr(
        trainer,
        "save_checkpoint",
        lambda path, state: written.append((path.name, state["train_state"]["epoch"])) or real(path, state),
    )
    over = [*tiny_overrides, "name=le", "train.epochs=5", "train.save_every=3", "train.last_every=2"]
    pretrain_run(load_config(None, over), progress=False)
    assert written == [
        ("last.pt", 2),
        ("checkpoint-0003.pt", 3),
        ("last.pt", 3),
        ("last.pt", 4),
        ("checkpoint-0005.pt", 5),
        ("last.pt", 5),
    ]


def test_resume_extends_a_finished_run(tiny_overrides):
    run, _ = pretrain_run(load_config(None, [*tiny_overrides, "name=c", "train.epochs=1"]), progress=False)
    _, res = resume_run(run, ["train.epochs=2"], progress=False)
    assert res["epochs"] == 2 and res["steps"] == 6


def test_same_seed_same_numbers(tiny_overrides):
    _, r1 = pretrain_run(load_config(None, [*tiny_overrides, "name=s1", "train.target=pixels"]), progress=False)
    _, r2 = pretrain_run(load_config(None, [*tiny_overrides, "name=s2", "train.target=pixels"]), progress=False)
    assert r1["final_epoch_loss"] == r2["final_epoch_loss"]


def test_gradient_accumulation_counts_optimizer_steps(tiny_overrides):
    cfg = load_config(None, [*tiny_overrides, "name=acc", "train.batch_size=8", "train.micro_batch_size=4"])
    _, res = pretrain_run(cfg, progress=False)
    assert res["steps"] == 2 * (24 // 8) and (res["accum_steps"], res["micro_batch"], res["effective_batch"]) == (
        2,
        4,
        8,
    )


def test_existing_run_is_not_overwritten(tiny_overrides):
    cfg = load_config(None, [*tiny_overrides, "name=x", "train.epochs=1"])
    pretrain_run(cfg, progress=False)
    with pytest.raises(KmimError, match="already holds a run"):
        pretrain_run(cfg, progress=False)


def test_bad_target_and_batch(tiny_overrides):
    with pytest.raises(KmimError, match="train.target='pix' is not valid"):
        pretrain_run(load_config(None, [*tiny_overrides, "name=t", "train.target=pix"]), progress=False)
    with pytest.raises(KmimError, match="lower train.batch_size"):
        pretrain_run(load_config(None, [*tiny_overrides, "name=u", "train.batch_size=64"]), progress=False)


def test_bad_tokenizer_file_writes_nothing(tiny_overrides, tmp_path):
    cfg = load_config(None, [*tiny_overrides, "name=bad", f"tokenizer.path={tmp_path / 'missing.pt'}"])
    with pytest.raises(KmimError, match="missing.pt does not exist"):
        pretrain_run(cfg, progress=False)
    assert not (tmp_path / "runs" / "bad").exists()


def test_non_finite_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    """A NaN injected at optimizer step 4 (epoch 1): one line naming the step; epoch 0's checkpoint is untouched."""
    import kmim.engine.targets as P
    from kmim.cli import main

    calls = {"n": 0}
    real = P.mim_loss

    def loss_with_nan(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        return out * float("nan") if calls["n"] == 5 else out

    monkeypatch.setattr(P, "mim_loss", loss_with_nan)
    out = tmp_path / "runs"
    assert main(["pretrain", "-q", *TINY, f"out_dir={out}", "name=nan", "train.epochs=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "loss became nan at optimizer step 4 (epoch 1)" in err and "checkpoints/last.pt (after epoch 1)" in err
    last = torch.load(out / "nan/checkpoints/last.pt", weights_only=True)
    assert last["train_state"]["epoch"] == 1 and last["train_state"]["step"] == 3
    assert not (out / "nan/encoder.pt").exists()


def test_keep_checkpoints_deletes_the_oldest_numbered_ones(tiny_overrides):
    from kmim.config import load_config
    from tests.helpers import pretrain_run

    cfg = load_config(
        None, [*tiny_overrides, "name=k", "train.epochs=4", "train.save_every=1", "train.keep_checkpoints=2"]
    )
    run, _ = pretrain_run(cfg)
    assert sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*.pt")) == [
        "checkpoint-0003.pt",
        "checkpoint-0004.pt",
    ]
