"""Logs that suit a batch scheduler and experiment tracking: no carriage returns and one line per log_every steps
when stderr is a file; TensorBoard scalars equal to metrics.jsonl; the target health of token runs; W&B offline."""

import json
import os
import subprocess
import sys

import pytest

from kmim.config import load_config
from tests.conftest import TINY
from tests.helpers import pretrain_run, resume_run

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_log_file_gets_plain_lines_at_the_log_interval(tmp_path):
    cmd = [sys.executable, "-m", "kmim", "pretrain", *TINY, f"out_dir={tmp_path}", "name=log", "train.log_every=2"]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)  # stderr is a pipe, not a TTY
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\r" not in proc.stderr
    steps = [line for line in proc.stderr.splitlines() if " step " in line]
    assert len(steps) == 6 // 2 and all("loss" in s and "img/s" in s and "eta" in s for s in steps)  # 6 steps
    assert "\r" not in proc.stdout
    assert sum(line.startswith("epoch ") and "min left" in line for line in proc.stdout.splitlines()) == 2


def test_tensorboard_scalars_equal_metrics_jsonl_and_target_health_is_logged(tiny_overrides):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = pretrain_run(load_config(None, [*tiny_overrides, "name=tb", "train.log_every=1"]))
    rows = _rows(run_dir)
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "train/loss",
        "train/lr",
        "train/img_s",
        "train/grad_norm",
        "epoch/epoch_loss",
        "epoch/targets_used",
        "epoch/targets_perplexity",
        "epoch/masked_top1",
    } <= tags
    loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert loss == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in rows if "step" in r]
    epochs = [r for r in rows if "epoch_loss" in r]
    for r in epochs:  # K = 8 ids; the fraction used and the perplexity are bounded by K
        assert 0 < r["targets_used"] <= 1 and 1 <= r["targets_perplexity"] <= 8 and 0 <= r["masked_top1"] <= 100
    assert [e.value for e in events.Scalars("epoch/masked_top1")] == pytest.approx([r["masked_top1"] for r in epochs])


def test_a_resume_drops_the_events_of_the_redone_epoch(tiny_overrides):
    pytest.importorskip("tensorboard")
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = pretrain_run(
        load_config(None, [*tiny_overrides, "name=re", "train.log_every=1", "train.epochs=3", "train.save_every=2"])
    )
    shutil.copy(run_dir / "checkpoints/checkpoint-0002.pt", run_dir / "checkpoints/last.pt")
    resume_run(run_dir)
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 10))  # each step once


def test_wandb_offline_run_keeps_its_id_across_a_resume(tiny_overrides, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir, _ = pretrain_run(load_config(None, [*tiny_overrides, "name=wb", "run.wandb=true", "train.epochs=1"]))
    from kmim.engine.checkpoint import load_checkpoint

    first = load_checkpoint(run_dir / "checkpoints/last.pt")["wandb_id"]
    assert first and any((run_dir / "wandb").iterdir())
    resume_run(run_dir, ["train.epochs=2"])
    assert load_checkpoint(run_dir / "checkpoints/last.pt")["wandb_id"] == first


def test_a_bar_in_a_log_file_writes_whole_lines_only(capsys):
    from tqdm import tqdm

    from kmim.progress import progress_bar

    outer = progress_bar(range(3), desc="outer", mininterval=0)
    for _ in outer:
        for _ in progress_bar(range(100), desc="work", mininterval=0, leave=False):
            pass
        tqdm.write("a message between bars", file=sys.stderr)  # tqdm clears bars around a write
    err = capsys.readouterr().err  # pytest's capture is not a terminal
    assert "\r" not in err and "\x1b" not in err and err.splitlines()[-1].startswith("outer: 100%")
    assert err.count("a message between bars\n") == 3
