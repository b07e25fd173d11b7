"""What every kmim DataLoader worker does first: leave preemption to the main process.

SLURM signals every process of a job step (proctrack/cgroup), the DataLoader workers included; SIGUSR1's default
action ends a process, so a worker would die and the main process stop with "DataLoader worker is killed by signal"
before it could write its checkpoint. Workers ignore SIGUSR1 and SIGTERM; the main process handles them
(kmim.engine.preempt) and shuts its workers down as it exits.
"""

from __future__ import annotations

import signal

PREEMPTION_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


def quiet_worker(_worker_id: int) -> None:
    """DataLoader worker_init_fn: preemption signals are the main process's."""
    for s in PREEMPTION_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
