"""Pretraining with online clustering targets (train.target=online-clusters): a smoke run, its logged target health,
the learned tokenizer file, an exact resume; offline tokenizers log their (constant) TCAS the same way."""

import json
import shutil

import torch

from kmim.config import load_config
from kmim.engine.checkpoint import load_checkpoint
from kmim.fit import load_tokenizer
from kmim.tokenizers.online import OnlineClusters
from tests.helpers import pretrain_run, resume_run

ONLINE = ["train.target=online-clusters", "train.health_images=12", "train.online.momentum=0.9"]


def _epochs(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "epoch_loss" in r]


def test_online_run_logs_target_health_and_saves_its_tokenizer(tiny_overrides):
    run_dir, res = pretrain_run(load_config(None, [*tiny_overrides, *ONLINE, "name=online"]))
    rows = _epochs(run_dir)
    assert len(rows) == 2 and res["target"] == "online-clusters"
    for r in rows:
        assert 0 < r["targets_used"] <= 1 and 1 <= r["targets_perplexity"] <= 8
        assert 0 <= r["assignment_entropy"] <= torch.log(torch.tensor(8.0)) + 1e-6 and r["clustering_loss"] > 0
        assert 0 <= r["tok_tcas"] <= 1 and 0 <= r["tok_nmi"] <= 1 and 0 < r["tok_usage"] <= 1
    tok = load_tokenizer(run_dir / "tokenizer.pt")
    assert isinstance(tok, OnlineClusters) and tok.k == 8
    student = torch.load(run_dir / "encoder.pt", weights_only=True)["state_dict"]
    teacher = tok.teacher.state_dict()
    moved = [k for k in student if not torch.equal(student[k], teacher[k])]
    assert moved  # the teacher lags the student (EMA), it is not a copy
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert len(ckpt["optimizer"]["param_groups"]) == 3  # decay, no decay, and the prototypes' own group
    assert ckpt["optimizer"]["param_groups"][-1]["betas"] == (0.9, 0.95)


def test_online_resume_after_a_crash_matches_an_uninterrupted_run(tiny_overrides):
    three = [*tiny_overrides, *ONLINE, "train.epochs=3", "train.save_every=2"]
    straight, _ = pretrain_run(load_config(None, [*three, "name=a"]))
    crashed, _ = pretrain_run(load_config(None, [*three, "name=b"]))
    ckpts = crashed / "checkpoints"
    shutil.copy(ckpts / "checkpoint-0002.pt", ckpts / "last.pt")  # as if the run died during epoch 3
    resume_run(crashed)
    a, b = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (straight, crashed))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["online"]["state"][k], b["online"]["state"][k]) for k in a["online"]["state"])
    assert [r["tok_tcas"] for r in _epochs(straight)] == [r["tok_tcas"] for r in _epochs(crashed)]


def test_offline_tokenizers_log_their_constant_tcas(tiny_overrides):
    run_dir, _ = pretrain_run(load_config(None, [*tiny_overrides, "train.health_images=12", "name=offline"]))
    rows = _epochs(run_dir)
    assert len({r["tok_tcas"] for r in rows}) == 1 and 0 <= rows[0]["tok_tcas"] <= 1
    assert "assignment_entropy" not in rows[0]
