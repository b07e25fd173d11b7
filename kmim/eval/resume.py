"""Probes that survive preemption: the LARS and attentive probes train heads for hours on ImageNet (1-1.5 h per
start on IN-1k), so they keep a checkpoint as a pretraining run does.

`ProbeCheckpoint(path, encoder_id, cfg)` is one file, RUN/probes/<probe>-<network>.pt for an encoder in a run
directory: the heads, their optimizer, where the probe stands (epochs done, optimizer steps done in the current
epoch) and what it has measured so far, with a key of what the probe's numbers depend on (the encoder, the data
and eval sections, the seed). It is written (rank 0, atomically) after every epoch and, on SIGUSR1 / SIGTERM, after
the step in progress, which then raises `Preempted` (exit 75; `scripts/slurm/kmim.sbatch` requeues). The same
command, run again, continues from it: the data order and the crops are seeded per epoch and sample, so a resumed
probe gives the numbers of an uninterrupted one (tests/eval/test_resume.py). A file whose key differs (another
encoder, another recipe) is not resumed: the probe starts afresh and replaces it. It is removed when the probe ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn

from kmim.config import RunConfig, config_to_dict
from kmim.dist import barrier, is_main
from kmim.engine.preempt import Preempted, signal_name, stop_requested
from kmim.runinfo import atomic_write

NEUTRAL_DATA = ("root", "num_workers", "prefetch_factor", "cache")  # where and how the data is read


@dataclass
class Position:
    """Where a probe stands: `epoch` epochs done, then `step` optimizer steps of the next one; `history` what it
    measured after each finished epoch."""

    epoch: int = 0
    step: int = 0
    history: list[float] = field(default_factory=list)


def probe_key(cfg: RunConfig, encoder_id: str) -> dict[str, Any]:
    """What a probe's numbers depend on: the encoder, the data (not where it lives), the eval section, the seed."""
    d = config_to_dict(cfg)
    data = {k: v for k, v in d["data"].items() if k not in NEUTRAL_DATA}
    return {"encoder": encoder_id, "data": data, "eval": d["eval"], "seed": cfg.train.seed}


class ProbeCheckpoint:
    """A probe's checkpoint file (`path` None: none is kept)."""

    def __init__(self, path: Path | None, encoder_id: str, cfg: RunConfig) -> None:
        self.path, self.key = path, probe_key(cfg, encoder_id)

    def restore(self, heads: nn.Module, opt: torch.optim.Optimizer) -> Position:
        """Load the heads and optimizer from a file with this key (every process reads it); else a fresh start."""
        if self.path is None or not self.path.is_file():
            return Position()
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        if state.get("key") != self.key:
            return Position()
        heads.load_state_dict(state["heads"])
        opt.load_state_dict(state["opt"])
        return Position(state["epoch"], state["step"], list(state["history"]))

    def save(self, heads: nn.Module, opt: torch.optim.Optimizer, pos: Position) -> None:
        """Rank 0 writes the file atomically; the heads and optimizer are the same on every process."""
        if self.path is None or not is_main():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "key": self.key,
            "heads": heads.state_dict(),
            "opt": opt.state_dict(),
            "epoch": pos.epoch,
            "step": pos.step,
            "history": pos.history,
        }
        atomic_write(self.path, lambda tmp: torch.save(state, tmp))

    def check_stop(self, heads: nn.Module, opt: torch.optim.Optimizer, pos: Position, *, name: str) -> None:
        """After a step: on a preemption signal (any process), save `pos` and raise `Preempted`."""
        if stop_requested():
            self._stop(heads, opt, pos, name=name)

    def _stop(self, heads: nn.Module, opt: torch.optim.Optimizer, pos: Position, *, name: str) -> NoReturn:
        self.save(heads, opt, pos)
        barrier()
        where = f"wrote {self.path}: run the same command again to continue" if self.path else "no checkpoint kept"
        raise Preempted(f"{name} stopped on {signal_name()} at epoch {pos.epoch + 1} step {pos.step}; {where}")

    def finish(self) -> None:
        """The probe ended: its file is no longer needed (rank 0 removes it once every process is past it)."""
        barrier()
        if self.path is not None and is_main():
            self.path.unlink(missing_ok=True)


def run_dir_of(checkpoint: Path) -> Path | None:
    """The run directory an encoder file belongs to (RUN/encoder.pt, RUN/checkpoints/X.pt), or None."""
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return run_dir if (run_dir / "config.yaml").is_file() else None


def probe_checkpoint(
    checkpoint: Path, cfg: RunConfig, network: str, *, probe: str | None = None
) -> ProbeCheckpoint | None:
    """The LARS / attentive probe's checkpoint for an encoder in a run directory: RUN/probes/<probe>-<network>.pt
    (`probe`: eval.probe unless named), keyed by the encoder file (path, size, modification time) and the recipe;
    none for an encoder elsewhere."""
    run_dir = run_dir_of(checkpoint)
    if run_dir is None:
        return None
    st = checkpoint.stat()
    encoder_id = f"{checkpoint.resolve()}:{st.st_size}:{st.st_mtime_ns}:{network}"
    return ProbeCheckpoint(run_dir / "probes" / f"{probe or cfg.eval.probe}-{network}.pt", encoder_id, cfg)
