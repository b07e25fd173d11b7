"""Process-group helpers for torchrun DDP. On one process every helper is a no-op (or the identity)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from kmim.errors import KmimError

T = TypeVar("T")


def resolve_device(name: str, field: str = "run.device") -> torch.device:
    """auto (CUDA when available) | cpu | cuda | cuda:N; `field` names the setting in errors."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise KmimError(f"{field}={name} but CUDA is not available here: use {field}=cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise KmimError(f"{field}={name!r} is not a device: use auto, cpu, cuda or cuda:N") from None


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of x over processes (x itself on one process)."""
    return all_reduce_sum(x) / get_world_size() if is_dist() else x


PG_TIMEOUT_ENV = "KMIM_PG_TIMEOUT_S"
PG_TIMEOUT_S = 1800  # how long a collective may wait for the slowest rank before the run stops
MAIN_WAIT_ENV = "KMIM_MAIN_WAIT_S"
MAIN_WAIT_S = 48 * 3600  # how long the other ranks wait for work that rank 0 does alone (`on_main`)


def _seconds(env: str, default: float) -> timedelta:
    raw = os.environ.get(env, str(default))
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        err = KmimError(f"{env}={raw!r} is not a positive number of seconds: unset it or give e.g. 3600")
        err.agreed = True  # type: ignore[attr-defined]  # the launcher gave every rank this environment: rank 0 says it
        raise err
    return timedelta(seconds=seconds)


def pg_timeout() -> timedelta:
    """The process group's timeout, set explicitly (torch's defaults differ by backend and version): 30 min, or
    KMIM_PG_TIMEOUT_S seconds. Every stage that reads a dataset is split over the ranks, so none waits for long;
    work that rank 0 does alone (fitting a tokenizer that trains a model first) is waited for by `on_main`."""
    return _seconds(PG_TIMEOUT_ENV, PG_TIMEOUT_S)


def main_wait() -> timedelta:
    """How long `on_main` lets the other ranks wait for rank 0: 48 h, or KMIM_MAIN_WAIT_S seconds."""
    return _seconds(MAIN_WAIT_ENV, MAIN_WAIT_S)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of x over processes (x itself on one process)."""
    if not is_dist():
        return x
    y = x.clone()
    dist.all_reduce(y)
    return y


def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    """Elementwise max of x over processes (x itself on one process)."""
    if not is_dist():
        return x
    y = x.clone()
    dist.all_reduce(y, op=dist.ReduceOp.MAX)
    return y


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list in its compressed form: "gpu[03-05,09],cpu1" -> "gpu03"."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if m is None:
        raise KmimError(f"SLURM_JOB_NODELIST={nodelist!r} is not a node list: set MASTER_ADDR to the first node")
    prefix, ranges = m.group(1), m.group(2)
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


SLURM_PORT_BASE = 29500  # MASTER_PORT under SLURM without one: this plus the job id modulo 2000, so two jobs that
# share a first node do not collide


def slurm_env(env: dict[str, str]) -> dict[str, str]:
    """torchrun's variables from SLURM's, for one process per task (`srun --ntasks-per-node=G python -m kmim ...`,
    as MAE's submitit and DINOv2 launch): RANK = SLURM_PROCID, WORLD_SIZE = SLURM_NTASKS, LOCAL_RANK = SLURM_LOCALID,
    MASTER_ADDR = the first host of SLURM_JOB_NODELIST, MASTER_PORT = SLURM_PORT_BASE + job id % 2000 (either kept
    when set). Empty when torchrun set RANK (torchrun inside an allocation wins), outside SLURM, or for one task."""
    if "RANK" in env or "SLURM_PROCID" not in env or int(env.get("SLURM_NTASKS", "1")) < 2:
        return {}
    nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
    return {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": env["SLURM_NTASKS"],
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "MASTER_ADDR": env.get("MASTER_ADDR", first_host(nodes)),
        "MASTER_PORT": env.get("MASTER_PORT", str(SLURM_PORT_BASE + int(env.get("SLURM_JOB_ID", "0")) % 2000)),
    }


def setup_distributed() -> None:
    """Join the process group when launched by torchrun (RANK / WORLD_SIZE / LOCAL_RANK set) or by SLURM with one
    task per GPU (`slurm_env`), before anything else so that even a config problem is agreed on by all processes:
    gloo for CPU tensors, NCCL for CUDA tensors (one group, both backends); a CUDA process takes cuda:LOCAL_RANK. The
    timeout is `pg_timeout()`. A no-op on a plain single-process launch."""
    os.environ.update(slurm_env(dict(os.environ)))
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or is_dist():
        return
    timeout = pg_timeout()
    if torch.cuda.is_available():
        local, gpus = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
        if local >= gpus:
            raise KmimError(
                f"torchrun started local rank {local} but this node has {gpus} GPU(s): use "
                f"--nproc-per-node {gpus}, or CUDA_VISIBLE_DEVICES= for CPU processes"
            )
        torch.cuda.set_device(local)
        dist.init_process_group("cpu:gloo,cuda:nccl", timeout=timeout)
    else:
        dist.init_process_group("gloo", timeout=timeout)


def local_device(device: torch.device) -> torch.device:
    """cuda -> this process's GPU (cuda:LOCAL_RANK) under torchrun; anything else unchanged."""
    if device.type == "cuda" and is_dist():
        return torch.device("cuda", torch.cuda.current_device())
    return device


def teardown_distributed() -> None:
    if is_dist():
        dist.destroy_process_group()
    _WAIT_GROUP.clear()


_WAIT_GROUP: list[Any] = []  # the gloo group `on_main` waits on, created on first use by every rank


def on_main(fn: Callable[[], T]) -> T | None:
    """fn() on rank 0 alone while the other processes wait for it on a gloo group whose timeout is `main_wait()`
    (48 h) instead of the process group's 30 min: a VQ-VAE or a supervised encoder trained before its K-means can
    take hours. A KmimError on rank 0 is raised on every rank (rank 0 prints it). Returns fn's result on rank 0 and
    None on the others (send it with `broadcast_object`); fn() itself on one process. fn must run no collective."""
    if not is_dist():
        return fn()
    if not _WAIT_GROUP:
        _WAIT_GROUP.append(dist.new_group(backend="gloo", timeout=main_wait()))
    out, problem = None, None
    if is_main():
        try:
            out = fn()
        except KmimError as e:
            problem = str(e)
    box = [problem]
    dist.broadcast_object_list(box, src=0, group=_WAIT_GROUP[0])
    if box[0] is not None:
        err = KmimError(box[0] if is_main() else f"rank 0: {box[0]}")
        err.agreed = True  # type: ignore[attr-defined]  # every rank raises it: rank 0 alone prints it
        raise err
    return out


def agree(fn: Callable[[], T]) -> T:
    """Run fn on every process; if it raised KmimError on any, raise a KmimError on all (naming the first failing
    rank), so no process is left waiting in a collective while another has stopped."""
    if not is_dist():
        return fn()
    try:
        out, problem = fn(), None
    except KmimError as e:
        out, problem = None, str(e)
    problems: list[str | None] = [None] * get_world_size()
    dist.all_gather_object(problems, problem)
    for rank, p in enumerate(problems):
        if p is not None:
            err = KmimError(p if rank == get_rank() else f"rank {rank}: {p}")
            err.agreed = True  # type: ignore[attr-defined]  # every rank raises it: rank 0 alone prints it
            raise err
    return out  # type: ignore[return-value]


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """obj of rank `src` on every process (itself on one process)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_in_order(x: torch.Tensor, indices: torch.Tensor, n: int, *, world: int | None = None) -> torch.Tensor:
    """Rows x (m, ...) that this process computed for dataset `indices` (m,), gathered from every process into
    dataset order (n, ...). On one process, or when `world` = 1 (rank 0 computed every row alone, e.g. inside
    `on_main`): x placed at indices, with no collective."""
    if is_dist() and world != 1:
        world = get_world_size()
        size = torch.tensor([x.shape[0]], device=x.device)
        sizes = [torch.zeros_like(size) for _ in range(world)]
        dist.all_gather(sizes, size)
        most = int(max(s.item() for s in sizes))
        pad = torch.zeros((most - x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
        ipad = torch.full((most - x.shape[0],), -1, dtype=indices.dtype, device=indices.device)
        xs = [torch.empty((most, *x.shape[1:]), dtype=x.dtype, device=x.device) for _ in range(world)]
        ids = [torch.empty(most, dtype=indices.dtype, device=indices.device) for _ in range(world)]
        dist.all_gather(xs, torch.cat([x, pad]))
        dist.all_gather(ids, torch.cat([indices, ipad]))
        x, indices = torch.cat(xs), torch.cat(ids)
        keep = indices >= 0
        x, indices = x[keep], indices[keep]
    out = torch.empty((n, *x.shape[1:]), dtype=x.dtype, device=x.device)
    out[indices] = x
    return out


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """x (m, ...) of every process (the same m on each) concatenated in rank order (world * m, ...); x itself on
    one process. No gradient flows through it."""
    if not is_dist():
        return x
    parts = [torch.empty_like(x) for _ in range(get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def mean_over_processes(value: float) -> float:
    """The mean of a per-process number over all processes (the number itself on one process)."""
    if not is_dist():
        return value
    return float(all_reduce_mean(torch.tensor(value, dtype=torch.float64)))  # a CPU tensor: gloo


def wrap_for_training(model: nn.Module, device: torch.device, compile: bool = False) -> nn.Module:
    """What the training step calls: the model, wrapped in DistributedDataParallel under torchrun (gradients
    averaged over processes) and optionally torch.compile'd (CUDA only; eager on CPU, where it gains nothing)."""
    wrapped: nn.Module = model
    if is_dist():
        ids = [device.index] if device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if compile and device.type == "cuda":
        wrapped = torch.compile(wrapped)  # type: ignore[assignment]
    return wrapped


def in_process_group(fn: Callable[[], T]) -> tuple[T, bool]:
    """Run a command's work inside the torchrun process group (a no-op on one process): (its result, whether this
    process is rank 0, the one that prints)."""
    setup_distributed()
    try:
        out = fn()
        return out, is_main()
    finally:
        teardown_distributed()
