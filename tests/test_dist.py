"""Process-group helpers on 2 gloo processes: `on_main` lets the other ranks wait for rank 0's long work past the
process group's timeout, and a KmimError on rank 0 reaches every rank as one line."""

import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kmim import dist as kd
from kmim.errors import KmimError

PG_TIMEOUT_S = 1  # the process group's timeout in these tests
WORK_S = 3  # rank 0's work: longer than PG_TIMEOUT_S


def _worker(rank: int, init: str, what: str, out: str) -> None:
    os.environ[kd.MAIN_WAIT_ENV] = "60"
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2, timeout=kd.pg_timeout())
    try:

        def work() -> int:
            time.sleep(WORK_S)
            if what == "fail":
                raise KmimError("tokenizer.k=9 is too large")
            return 42

        if what == "barrier":  # the plain collective: rank 1 waits in it while rank 0 works
            result: object = work() if rank == 0 else None
            dist.barrier()
        else:
            try:
                result = kd.on_main(work)
            except KmimError as e:
                result = f"{e!s} agreed={getattr(e, 'agreed', False)}"
        torch.save(result, f"{out}.{rank}")
    except RuntimeError as e:  # gloo's timeout
        torch.save(f"timeout: {type(e).__name__}", f"{out}.{rank}")
    finally:
        kd.teardown_distributed()


def _run(tmp_path, what: str) -> list[object]:
    os.environ[kd.PG_TIMEOUT_ENV] = str(PG_TIMEOUT_S)
    try:
        out = str(tmp_path / what)
        mp.spawn(_worker, args=(f"file://{tmp_path / 'store'}-{what}", what, out), nprocs=2, join=True)
        return [torch.load(f"{out}.{r}", weights_only=False) for r in range(2)]
    finally:
        del os.environ[kd.PG_TIMEOUT_ENV]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_on_main_waits_past_the_process_group_timeout(tmp_path):
    assert _run(tmp_path, "on_main") == [42, None]  # rank 0's result; the others get None (broadcast it if needed)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_a_plain_barrier_times_out_where_on_main_waits(tmp_path):
    """The control: the same work before a barrier of the 1-s group makes rank 1 time out (what on_main avoids)."""
    res = _run(tmp_path, "barrier")
    assert str(res[1]).startswith("timeout"), res


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_a_kmim_error_on_rank_0_stops_every_rank_with_its_line(tmp_path):
    assert _run(tmp_path, "fail") == [
        "tokenizer.k=9 is too large agreed=True",
        "rank 0: tokenizer.k=9 is too large agreed=True",
    ]


def test_main_wait_is_checked():
    os.environ[kd.MAIN_WAIT_ENV] = "soon"
    try:
        with pytest.raises(KmimError, match="KMIM_MAIN_WAIT_S='soon' is not a positive number of seconds"):
            kd.main_wait()
    finally:
        del os.environ[kd.MAIN_WAIT_ENV]
    assert kd.main_wait().total_seconds() == kd.MAIN_WAIT_S


@pytest.mark.parametrize("rank, lines", [("0", 1), ("1", 0)])
def test_a_bad_timeout_under_a_launcher_is_said_once_by_rank_0(rank, lines, monkeypatch, capsys):
    """Every rank reads the same environment: rank 0 prints the line, the others exit 2 quietly (was one per rank)."""
    from kmim.cli import main

    for k, v in {"RANK": rank, "WORLD_SIZE": "2", "LOCAL_RANK": rank, kd.PG_TIMEOUT_ENV: "abc"}.items():
        monkeypatch.setenv(k, v)
    assert main(["knn", "--random-init", "-q", "data.name=synthetic"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == lines and all("KMIM_PG_TIMEOUT_S='abc' is not a positive number" in x for x in err)
