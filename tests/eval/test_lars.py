"""MAE's LARS probe, data-parallel: 2 gloo processes (with accumulation) train the same head as 1 process, on
crops seeded per sample; the final and the best epoch are both reported; a batch larger than the split is refused."""

import os
import subprocess
import sys

import pytest
import torch

from kmim.config import load_config
from kmim.errors import KmimError
from kmim.eval import random_encoder
from kmim.eval.lars import lars_probe
from tests.conftest import TINY

LARS = [
    *TINY,
    "data.synthetic_per_class=16",
    "eval.probe=lars",
    "eval.lars.epochs=3",
    "eval.lars.warmup_epochs=1",
    "eval.lars.batch_size=8",
]
SCRIPT = """
import sys, torch
from kmim.config import load_config
from kmim.dist import in_process_group, is_main
from kmim.eval import random_encoder
from kmim.eval.lars import lars_probe

def work():
    cfg = load_config(None, sys.argv[2:])
    res = lars_probe(random_encoder(cfg, 0), cfg, "cpu", progress=False)
    if is_main():
        torch.save(res, sys.argv[1])

in_process_group(work)
"""


@pytest.mark.slow  # >= 7 s on 2 cores; runs in make test-all
def test_two_processes_train_the_head_of_one(tmp_path):
    script = tmp_path / "lars.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    one = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "one.pt"), *LARS],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--standalone",  # a free port: tests run in parallel (pytest -n)
        str(script),
        str(tmp_path / "two.pt"),
        *LARS,
        "eval.lars.micro_batch_size=2",
    ]  # 2 x 2 accum x 2 procs
    two = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = (torch.load(tmp_path / f"{n}.pt", weights_only=False) for n in ("one", "two"))
    for k in a["head"]:  # BatchNorm over the global batch: the same statistics whatever the split
        assert torch.allclose(a["head"][k], b["head"][k], atol=1e-5, rtol=1e-4), k
    assert a["history"] == pytest.approx(b["history"], abs=1e-9) and len(a["history"]) == 3
    assert a["top1"] == a["history"][-1] and a["best_top1"] == max(a["history"])
    assert a["global_batch"] == b["global_batch"] == 8 and a["head"]["1.weight"].abs().sum() > 0


def test_a_batch_larger_than_the_split_is_refused():
    cfg = load_config(None, [*LARS, "eval.lars.batch_size=1000"])
    with pytest.raises(KmimError, match=r"eval.lars.batch_size=1000 exceeds the 48 training images"):
        lars_probe(random_encoder(cfg, 0), cfg, "cpu", progress=False)


def test_the_training_crop_is_taken_from_the_full_image(tmp_path):
    """MAE's RandomResizedCrop sees the whole photo (no Resize(256) + CenterCrop(224) first)."""
    from PIL import Image

    from kmim.data.transforms import lars_probe_transform

    cfg = load_config(None, ["data.name=imagefolder", f"data.root={tmp_path}", "data.img_size=32"])
    tf = lars_probe_transform(cfg.data, (0.5,) * 3, (0.5,) * 3, native=None)
    assert type(tf.transforms[0]).__name__ == "RandomResizedCrop"
    img = Image.new("RGB", (80, 40))
    img.paste((255, 255, 255), (0, 0, 8, 40))  # a white band at the far left, outside any 40 x 40 centre crop
    torch.manual_seed(0)
    assert any(tf(img).max() > 0.9 for _ in range(40))
