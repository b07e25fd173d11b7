"""Probes that survive preemption (kmim.eval.resume): `kmim probe` with the LARS or the attentive probe, signalled
mid-epoch, exits 75 with RUN/probes/<probe>-student.pt; the same command, run again, ends with the uninterrupted
probe's numbers, bit for bit; a probe file of another recipe is not resumed."""

import json
import os
import signal

import pytest
import torch

import kmim.eval.resume as R
from kmim.cli import main
from kmim.config import load_config
from tests.conftest import TINY
from tests.helpers import pretrain_run

PROBES = {
    "lars": ["eval.probe=lars", "eval.lars.epochs=3", "eval.lars.warmup_epochs=1", "eval.lars.batch_size=8"],
    "attentive": [
        "eval.probe=attentive",
        "eval.attentive.epochs=3",
        "eval.attentive.warmup_epochs=1",
        "eval.attentive.batch_size=8",
        "eval.attentive.lrs=[1e-3,1e-2]",
        "eval.attentive.weight_decays=[0.0]",
    ],
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("probe-resume")
    return pretrain_run(load_config(None, [*TINY, f"out_dir={out}", "name=r", "train.epochs=1"]))[0]


def _probe(run_dir, probe, capsys, *extra):
    code = main(["probe", str(run_dir), "-q", *PROBES[probe], *extra])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if code == 0 else None), out.err


def _signal_at(monkeypatch, call=0):
    """The probe's stop check (once per step) sends SIGUSR1 after step `call` (0: never); returns the calls."""
    real, calls = R.stop_requested, []

    def check():
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signal.SIGUSR1)
        return real()

    monkeypatch.setattr(R, "stop_requested", check)
    return calls


@pytest.mark.parametrize("probe", ["lars", "attentive"])
def test_a_signal_mid_epoch_then_the_same_command_gives_the_uninterrupted_probe(probe, run_dir, monkeypatch, capsys):
    steps = _signal_at(monkeypatch)
    code, whole, _ = _probe(run_dir, probe, capsys)
    state, total = run_dir / "probes" / f"{probe}-student.pt", len(steps)
    assert code == 0 and not state.exists()  # a finished probe leaves no checkpoint
    _signal_at(monkeypatch, 5)  # after the 5th step: mid-epoch (lars 3 steps per epoch, attentive 2)
    code, _, err = _probe(run_dir, probe, capsys)
    saved = torch.load(state, weights_only=False)
    assert code == 75 and saved["step"] > 0 and saved["epoch"] >= 1  # mid-epoch, after a finished epoch
    assert f"{probe} probe stopped on SIGUSR1 at epoch {saved['epoch'] + 1} step {saved['step']}" in err
    steps = _signal_at(monkeypatch)
    code, resumed, _ = _probe(run_dir, probe, capsys)
    assert code == 0 and resumed == whole and not state.exists()
    assert len(steps) == total - 5  # it continued after step 5, it did not start again


def test_a_probe_file_of_another_recipe_is_not_resumed(run_dir, monkeypatch, capsys):
    steps = _signal_at(monkeypatch)
    code, whole, _ = _probe(run_dir, "lars", capsys)
    total = len(steps)
    _signal_at(monkeypatch, 2)
    assert _probe(run_dir, "lars", capsys, "eval.lars.base_lr=0.2")[0] == 75  # another recipe stopped mid-way
    steps = _signal_at(monkeypatch)
    code, again, _ = _probe(run_dir, "lars", capsys)
    assert code == 0 and again == whole and len(steps) == total  # started afresh, the other heads not loaded
