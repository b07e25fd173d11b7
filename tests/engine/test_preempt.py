"""Preemption (kmim.engine.preempt): SIGUSR1 mid-epoch writes last.pt and exits with PREEMPTED_EXIT; the same
command line, run again, continues the run and ends with the uninterrupted run's weights, bit for bit. SLURM's
variables alone (no torchrun) start a 2-process run."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

import kmim.engine.trainer as trainer_module
from kmim.cli import main
from kmim.dist import first_host, slurm_env
from kmim.errors import PREEMPTED_EXIT
from tests.conftest import TINY

RUN = [*TINY, "train.epochs=2", "train.warmup_epochs=1", "train.log_every=1", "-q"]  # 3 steps per epoch


def _weights(run):
    return torch.load(run / "checkpoints" / "last.pt", weights_only=False)["model"]


def _signal_at(monkeypatch, call: int, signum=signal.SIGUSR1):
    """The trainer's stop check sends `signum` to this process at its `call`-th use (after that step)."""
    real, calls = trainer_module.stop_requested, []

    def check() -> bool:
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signum)
        return real()

    monkeypatch.setattr(trainer_module, "stop_requested", check)


@pytest.mark.parametrize("target, signum", [("tokens", signal.SIGUSR1), ("pixels", signal.SIGTERM)])
def test_a_signal_mid_epoch_then_the_same_command_gives_the_uninterrupted_run(
    target, signum, tmp_path, monkeypatch, capsys
):
    args = ["pretrain", *RUN, f"train.target={target}", f"out_dir={tmp_path}"]
    assert main([*args, "name=whole"]) == 0
    _signal_at(monkeypatch, 4, signum)  # after step 4: epoch 2, step 1 of 3
    assert main([*args, "name=cut"]) == PREEMPTED_EXIT
    err = capsys.readouterr().err
    assert f"preempted: stopped on {signal.Signals(signum).name} at epoch 2 step 1 of 3" in err
    state = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=False)["train_state"]
    assert (state["epoch"], state["epoch_step"], state["step"]) == (1, 1, 4)
    monkeypatch.undo()
    assert main([*args, "name=cut"]) == 0  # the same command line continues it
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    whole = [json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch_loss"] for r in rows if "epoch_loss" in r] == [r["epoch_loss"] for r in whole if "epoch_loss" in r]


def test_the_same_command_line_continues_a_moved_folder_that_reads_its_data_otherwise(tmp_path, monkeypatch):
    """A requeue on another allocation: the run folder moved (out_dir) and the data read with other workers; the
    same command line with those paths continues the run to the uninterrupted weights and records the new paths."""
    args = ["pretrain", *RUN, "train.target=pixels"]
    assert main([*args, f"out_dir={tmp_path}", "name=whole"]) == 0
    _signal_at(monkeypatch, 4)
    assert main([*args, f"out_dir={tmp_path / 'a'}", "name=cut"]) == PREEMPTED_EXIT
    monkeypatch.undo()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "cut").rename(tmp_path / "b" / "cut")
    assert main([*args, f"out_dir={tmp_path / 'b'}", "name=cut", "data.num_workers=1"]) == 0
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "b" / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    saved = (tmp_path / "b" / "cut" / "config.yaml").read_text()
    assert f"out_dir: {tmp_path / 'b'}" in saved and "num_workers: 1" in saved


def test_the_same_command_line_on_another_config_is_still_refused(tmp_path, capsys):
    args = ["pretrain", *RUN, f"out_dir={tmp_path}", "name=r", "train.epochs=1"]
    assert main(args) == 0
    assert main([*args[:-1], "train.epochs=1", "train.base_lr=0.01"]) == 2
    assert "already holds a run: pass --resume" in capsys.readouterr().err


def test_slurm_variables_become_torchruns():
    env = {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "3", "SLURM_JOB_NODELIST": "gpu[07-08]"}
    out = slurm_env({**env, "SLURM_JOB_ID": "4242"})
    assert out == {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3", "MASTER_ADDR": "gpu07", "MASTER_PORT": "29742"}
    assert slurm_env({**env, "RANK": "0"}) == {} and slurm_env({**env, "SLURM_NTASKS": "1"}) == {}
    assert first_host("node1,node2") == "node1" and first_host("a[009-012,15],b3") == "a009"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _slurm_tasks(args: list[str]) -> list[subprocess.Popen]:
    """`python -m kmim ARGS` as 2 SLURM tasks on this host: SLURM's variables only (no torchrun's)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env.update(OMP_NUM_THREADS="1", SLURM_NTASKS="2", SLURM_JOB_NODELIST="127.0.0.1", MASTER_PORT=str(_free_port()))
    return [
        subprocess.Popen(
            [sys.executable, "-m", "kmim", *args],
            env={**env, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)},
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_slurm_tasks_without_torchrun_run_together(tmp_path):
    """srun --ntasks=2 python -m kmim pretrain ...: the tasks join one process group (gloo) and give the 2-process
    run: one run directory written by rank 0, its results saying world_size 2, the weights of 1 process."""
    tok = tmp_path / "tok.pt"
    base = [*RUN, f"out_dir={tmp_path}", f"tokenizer.path={tok}", "run.device=cpu", "train.batch_size=8"]
    assert main(["tokenize", "-q", *TINY, "--out", str(tok)]) == 0
    assert main(["pretrain", *base, "name=one"]) == 0
    procs = _slurm_tasks(["pretrain", *base, "name=two"])
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert json.loads((tmp_path / "two" / "results.json").read_text())["world_size"] == 2
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert all((a[k] - b[k]).abs().max() <= 1e-3 for k in a)  # float noise (the key bias: see test_ddp)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_a_run_preempted_on_two_processes_continues_on_one(tmp_path):
    """Another allocation: 2 SLURM tasks get SIGUSR1 mid-run (each writes nothing but rank 0's last.pt, both exit
    75), and the same command line on 1 process finishes with the weights of an uninterrupted 1-process run (float
    tolerance: the 2-process steps sum gradients in another order)."""
    import time

    tok = tmp_path / "tok.pt"
    run = [*TINY, "data.synthetic_per_class=16", "train.epochs=10", "train.warmup_epochs=1", "train.log_every=1", "-q"]
    base = [*run, f"out_dir={tmp_path}", f"tokenizer.path={tok}", "run.device=cpu", "train.batch_size=8"]
    assert main(["tokenize", "-q", *TINY, "--out", str(tok)]) == 0
    assert main(["pretrain", *base, "name=one"]) == 0
    procs = _slurm_tasks(["pretrain", *base, "name=two"])
    metrics, end = tmp_path / "two" / "metrics.jsonl", time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().count('"step"') >= 3) and time.monotonic() < end:
        time.sleep(0.002)
    for p in procs:
        p.send_signal(signal.SIGUSR1)
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [PREEMPTED_EXIT] * 2, errs
    assert "preempted: stopped on SIGUSR1" in errs[0] and "preempted" not in errs[1]  # rank 0 says it
    assert main(["pretrain", *base, "name=two"]) == 0  # the same line, one process
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert all((a[k] - b[k]).abs().max() <= 1e-3 for k in a)
    assert json.loads((tmp_path / "two" / "results.json").read_text())["world_size"] == 1


def test_dataloader_workers_leave_the_preemption_signals_to_the_main_process():
    """SLURM signals every process of the step: a worker that died of SIGUSR1 would stop the run before its
    checkpoint. kmim's workers ignore it; the loader goes on to the end."""
    from torch.utils.data import TensorDataset

    from kmim.data import make_loader

    loader = make_loader(TensorDataset(torch.arange(64.0)), 4, shuffle=False, num_workers=1)
    it = iter(loader)
    first = next(it)
    for w in it._workers:  # the worker processes
        os.kill(w.pid, signal.SIGUSR1)
        os.kill(w.pid, signal.SIGTERM)
    rest = list(it)
    assert torch.cat([first[0], *(b[0] for b in rest)]).tolist() == list(range(64))
