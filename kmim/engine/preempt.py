"""Preemption: a signal asks a training run to stop cleanly, and the same command, run again, continues it.

SLURM sends SIGUSR1 some time before it kills a job when the job asked for it (`#SBATCH --signal=USR1@120`, what
submitit uses), and SIGTERM when it preempts or cancels one. While a trainer runs (`catch_preemption`), either signal
sets a flag instead of killing the process; the trainer reads it at its next host sync (every `sync_every` optimizer
steps; under DDP the flags are max-reduced, so every rank stops after the same step), writes last.pt mid-epoch (rank
0, atomically) and raises `Preempted`: the command exits with PREEMPTED_EXIT, which `scripts/slurm/kmim.sbatch`
answers with `scontrol requeue`. The resumed run skips the batches already seen in that epoch and is bit-identical
to an uninterrupted one (tests/engine/test_preempt.py).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

import torch

from kmim.data.workers import PREEMPTION_SIGNALS
from kmim.dist import all_reduce_max, is_dist
from kmim.errors import PREEMPTED_EXIT, Preempted

__all__ = ["PREEMPTED_EXIT", "SIGNALS", "Preempted", "catch_preemption", "signal_name", "stop_requested"]
SIGNALS = PREEMPTION_SIGNALS  # DataLoader workers ignore them (kmim.data.workers): the main process handles them
_received: list[int] = []  # the signals received while a trainer runs


def _note(signum: int, _frame: FrameType | None) -> None:
    _received.append(signum)


@contextlib.contextmanager
def catch_preemption() -> Iterator[None]:
    """SIGUSR1 and SIGTERM set the flag instead of ending the process while the block runs (main thread only:
    elsewhere, as in a test's worker thread, signals keep their handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    old = {s: signal.signal(s, _note) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def stop_requested() -> bool:
    """Whether any process received a preemption signal (one small all-reduce under DDP: call at host syncs)."""
    if not is_dist():
        return bool(_received)
    return bool(all_reduce_max(torch.tensor([len(_received)], dtype=torch.int64)).item())


def signal_name() -> str:
    return signal.Signals(_received[0]).name if _received else "a signal on another rank"
