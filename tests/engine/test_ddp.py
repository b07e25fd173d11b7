"""torchrun with 2 CPU processes (gloo) and the same global batch gives the run of 1 process: the same per-step
losses (1e-5 relative) and final weights (1e-5); so does 1 process with gradient accumulation. A K-means tokenizer
fitted by 2 processes equals the 1-process file."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from kmim.cli import main
from tests.conftest import TINY

RUN = [*TINY, "data.synthetic_per_class=16", "train.epochs=2", "train.log_every=1", "train.warmup_epochs=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--standalone",  # a free port: tests run in parallel (pytest -n)
        "-m",
        "kmim",
        *args,
    ]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)


def _losses(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "step" in r]


def _same_weights(run_a, run_b):
    wa = torch.load(run_a / "encoder.pt", weights_only=True)["state_dict"]
    wb = torch.load(run_b / "encoder.pt", weights_only=True)["state_dict"]
    _same_tensors(wa, wb)


def _same_tensors(wa, wb):
    for k in wa:
        diff = (wa[k] - wb[k]).abs()
        if k.endswith("attn.qkv.bias"):  # the key bias gets an analytically zero gradient (softmax is invariant
            d = diff.numel() // 3  # to a shift shared by all keys): Adam turns its float noise into a random walk
            assert diff[d : 2 * d].max() < 1e-3 and torch.cat([diff[:d], diff[2 * d :]]).max() <= 1e-5, k
        else:
            assert diff.max() <= 1e-5, k


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_gloo_processes_match_one(tmp_path, capsys):
    out, tok = tmp_path / "runs", tmp_path / "tok.pt"
    base = [*RUN, f"out_dir={out}", f"tokenizer.path={tok}", "run.device=cpu"]
    # the 1-process runs in this process (one torch thread, as the conftest sets), the 2-process ones under torchrun
    assert main(["tokenize", "-q", *RUN, "--out", str(tok)]) == 0
    assert main(["pretrain", "-q", *base, "name=one", "train.batch_size=8"]) == 0
    two = _torchrun(2, "pretrain", "-q", *base, "name=two", "train.batch_size=8")  # the same global batch
    assert two.returncode == 0, two.stderr[-3000:]
    assert main(["pretrain", "-q", *base, "name=acc", "train.batch_size=8", "train.micro_batch_size=4"]) == 0
    a, b, c = _losses(out / "one"), _losses(out / "two"), _losses(out / "acc")
    assert len(a) == len(b) == len(c) == 2 * (3 * 16 // 8) and [s for s, _ in a] == [s for s, _ in b]
    for (_, la), (_, lb) in zip(a, b, strict=True):
        assert abs(la - lb) <= 1e-5 * abs(la), (la, lb)
    assert json.loads((out / "acc/results.json").read_text())["accum_steps"] == 2  # its rows log the last micro-batch
    _same_weights(out / "one", out / "acc")
    _same_weights(out / "one", out / "two")
    capsys.readouterr()
    assert main(["knn", "-q", str(out / "one")]) == 0
    knn1 = json.loads(capsys.readouterr().out)
    knn2 = _torchrun(2, "knn", "-q", str(out / "one"))  # features extracted in 2 shards and gathered in order
    assert knn2.returncode == 0, knn2.stderr[-2000:]
    assert json.loads(knn2.stdout)["knn_top1"] == knn1["knn_top1"]
    results = json.loads((out / "two/results.json").read_text())
    assert results["images_seen"] == json.loads((out / "one/results.json").read_text())["images_seen"]


def test_online_clustering_on_two_gloo_processes_matches_one(tmp_path):
    """Online targets (with CAPI's weight-normed cosine student head): Sinkhorn's column sums (and max shift) are
    all-reduced and the prototypes' gradients averaged, so 2 processes with the same global batch give the 1-process
    losses, encoder and prototypes."""
    out = tmp_path / "runs"
    base = [
        *RUN,
        f"out_dir={out}",
        "run.device=cpu",
        "train.target=online-clusters",
        "train.batch_size=8",
        "train.online.momentum=0.9",
        "model.head=cosine",
    ]
    assert main(["pretrain", "-q", *base, "name=one"]) == 0
    two = _torchrun(2, "pretrain", "-q", *base, "name=two")
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _losses(out / "one"), _losses(out / "two")
    assert len(a) == len(b) == 2 * (3 * 16 // 8)
    for (_, la), (_, lb) in zip(a, b, strict=True):
        assert abs(la - lb) <= 1e-5 * abs(la), (la, lb)
    _same_weights(out / "one", out / "two")
    pa, pb = (torch.load(out / n / "tokenizer.pt", weights_only=False)["state"] for n in ("one", "two"))
    _same_tensors(pa, pb)  # the teacher (its EMA of the student's key bias walks too) and the prototypes


@pytest.mark.slow  # >= 7 s on 2 cores; runs in make test-all
def test_two_processes_fit_the_same_tokenizer_file_as_one(tmp_path):
    """`torchrun -m kmim tokenize`: each rank decodes half the images (with a DataLoader worker), the patch sample is
    gathered and rank 0 writes a file whose centroids equal the 1-process file's, bit for bit."""
    fit = [*RUN, "tokenizer.fit_images=40", "tokenizer.batch_size=5"]
    one = subprocess.run(
        [sys.executable, "-m", "kmim", "tokenize", "-q", *fit, "--out", str(tmp_path / "one.pt")],
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert one.returncode == 0, one.stderr
    two = _torchrun(2, "tokenize", "-q", *fit, "data.num_workers=1", "--out", str(tmp_path / "two.pt"))
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = (torch.load(tmp_path / f"{n}.pt", weights_only=False) for n in ("one", "two"))
    assert torch.equal(a["state"]["centroids"], b["state"]["centroids"])
    assert a["meta"]["fit"] == b["meta"]["fit"]


@pytest.mark.slow  # >= 7 s on 2 cores; runs in make test-all
def test_a_rank_that_cannot_read_the_tokenizer_stops_every_rank(tmp_path):
    """Rank 1's tokenizer.path is missing (a node without the shared file): one line, exit 2, nothing written."""
    out = tmp_path / "runs"
    out.mkdir()
    code = (
        "import os, sys; from kmim.cli import main; "
        "sys.exit(main(['pretrain', '-q', *sys.argv[1:-1], "
        "'tokenizer.path=' + (sys.argv[-1] if os.environ['RANK'] == '0' else '/nowhere/tok.pt')]))"
    )
    tok = tmp_path / "tok.pt"
    assert (
        subprocess.run(
            [sys.executable, "-m", "kmim", "tokenize", "-q", *RUN, "--out", str(tok)], env=ENV, capture_output=True
        ).returncode
        == 0
    )
    script = tmp_path / "entry.py"
    script.write_text(code)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--standalone",  # a free port: tests run in parallel (pytest -n)
        str(script),
        *RUN,
        f"out_dir={out}",
        "run.device=cpu",
        str(tok),
    ]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("kmim pretrain: error:")]
    assert lines == [
        "kmim pretrain: error: rank 1: tokenizer.path=/nowhere/tok.pt does not exist: fit one with "
        "`kmim tokenize` or unset tokenizer.path"
    ], proc.stderr[-2000:]
    assert list(out.iterdir()) == []


@pytest.mark.slow  # >= 7 s on 2 cores; runs in make test-all
def test_an_image_that_fails_to_decode_mid_run_stops_every_rank_with_one_line_each(tmp_path):
    """A BMP whose header is fine but whose data is cut passes the header scan (a cut JPEG or PNG no longer does: its
    end marker is missing) and fails when decoded in epoch 1 on one rank: that rank names the file, the other says it
    stopped because of it; no traceback from kmim."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(8):
                img = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
                img.save(tmp_path / "data" / split / c / f"{i}.JPEG", quality=90)
    bad = tmp_path / "data/train/b/3.bmp"
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(bad)
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 3])
    model = [o for o in RUN if o.startswith("model.")]
    proc = _torchrun(
        2,
        "pretrain",
        "-q",
        *model,
        "data.name=imagefolder",
        f"data.root={tmp_path / 'data'}",
        "data.img_size=16",
        "train.target=pixels",
        "train.epochs=1",
        "train.warmup_epochs=0",
        "train.batch_size=4",
        f"out_dir={tmp_path / 'runs'}",
        "run.device=cpu",
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("kmim pretrain: error:")]
    assert len(lines) == 2, proc.stderr[-3000:]
    assert sum(f"{bad}: unreadable or corrupt image" in line for line in lines) == 1
    assert sum("stopped because another process did" in line for line in lines) == 1
    frames = "".join(x for x in proc.stderr.splitlines(True) if x.lstrip().startswith("File "))
    assert not re.search(r"kmim/(cli|commands|engine|data|fit|eval)", frames)
    # (torchrun's launcher still prints its own ChildFailedError summary; no frame of kmim is in a traceback)
