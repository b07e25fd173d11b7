"""A real process killed with SIGKILL mid-epoch and again during a checkpoint write resumes to the weights of an
uninterrupted run, bit for bit."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from kmim.cli import main
from tests.conftest import TINY

# 16 steps an epoch
RUN = [*TINY, "data.synthetic_per_class=32", "model.embed_dim=64", "train.epochs=4", "train.log_every=1"]
RUN += ["train.save_every=1", "tokenizer.k=8"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _kmim(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kmim", *args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120.0) -> bool:
    """SIGKILL `proc` as soon as ready() holds (polled every ~0.5 ms); False if the process ended first."""
    end = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < end:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.0005)
    proc.wait()
    return False


def _mid_epoch(run: Path, epoch: int):
    def ready() -> bool:
        m = run / "metrics.jsonl"
        return (
            m.is_file()
            and f'"epoch": {epoch}, "loss"' in m.read_text()
            and f'"epoch": {epoch}, "epoch_loss"' not in m.read_text()
        )

    return ready


def _writing_checkpoint(run: Path):
    ckpts = run / "checkpoints"
    return lambda: ckpts.is_dir() and any(n.endswith(".tmp") for n in os.listdir(ckpts))


def _encoder(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "encoder.pt", weights_only=True)["state_dict"]


def test_sigkill_mid_epoch_and_during_a_checkpoint_write_resume_bit_identically(tmp_path):
    out = tmp_path / "runs"
    tok = tmp_path / "tok.pt"
    assert main(["tokenize", "-q", *RUN, "--out", str(tok)]) == 0
    common = [*RUN, f"out_dir={out}", f"tokenizer.path={tok}"]
    assert main(["pretrain", "-q", *common, "name=straight"]) == 0  # in this process, one torch thread (conftest)

    run = out / "crashed"
    assert _kill_when(_kmim("pretrain", "-q", *common, "name=crashed"), _mid_epoch(run, 1)), "finished before kill"
    assert not (run / "encoder.pt").exists()
    kills_in_write = 0
    for _ in range(4):  # resume, and kill again inside the next checkpoint write (milliseconds long)
        proc = _kmim("pretrain", "-q", "--resume", str(run))
        if not _kill_when(proc, _writing_checkpoint(run)):
            assert proc.returncode == 0, proc.stderr.read()
            break
        kills_in_write += 1
    assert kills_in_write >= 1
    if not (run / "encoder.pt").exists():
        assert _kmim("pretrain", "-q", "--resume", str(run)).wait() == 0
    a, b = _encoder(out / "straight"), _encoder(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(n.endswith(".tmp") for n in os.listdir(run / "checkpoints"))  # orphans cleaned on resume
