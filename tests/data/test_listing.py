"""ImageFolder listings walked once (kmim.data.listing) and a scan key without a `stat` per image (kmim.data.scan):
the door, pretraining and evaluation share one walk of each split while its folders are unchanged; adding,
removing or renaming a file is seen at the next build and changes the scan key."""

import os

import pytest
from PIL import Image

import kmim.data.listing as L
from kmim.config import load_config
from kmim.data import build_dataset
from kmim.data.scan import scan_key
from kmim.resolve import check_images


def _folder(root):
    for split in ("train", "val"):
        for c in ("a", "b"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (20, 20), (40 * i, 200, 30)).save(d / f"{i}.png")
    return root


def _walks(monkeypatch):
    real, calls = L.walk, []
    monkeypatch.setattr(L, "walk", lambda folder: calls.append(folder) or real(folder))
    return calls


def test_the_door_and_the_runs_share_one_walk_per_split(tmp_path, monkeypatch):
    root = _folder(tmp_path / "data")
    cfg = load_config(None, ["data.name=imagefolder", f"data.root={root}", "data.img_size=16"])
    calls = _walks(monkeypatch)
    key = check_images(cfg, ("train", "test"), tmp_path / "run", progress=False, min_side=1)
    for _ in range(3):  # pretraining, features, probes
        ds, info = build_dataset(cfg.data, "train")
        build_dataset(cfg.data, "test")
    assert sorted(calls) == [str(root / "train"), str(root / "val")]  # one walk of each split
    assert len(ds) == 4 and info.classes == ("a", "b") and key["files"] == 8
    Image.new("RGB", (20, 20)).save(root / "train" / "b" / "2.png")  # a new file: its class folder's time moves
    os.utime(root / "train" / "b", ns=(1, 1))  # even a folder time set back: the stamp differs, so it is walked
    assert len(build_dataset(cfg.data, "train")[0]) == 5 and len(calls) == 3
    assert [s for s, _ in build_dataset(cfg.data, "train")[0].samples][-1].endswith("b/2.png")


def test_the_scan_key_changes_with_the_file_list_not_per_image_stats(tmp_path, monkeypatch):
    root = _folder(tmp_path / "data")
    folder = str(root / "train")

    def key():
        classes, samples = L.listing(folder)
        return scan_key([p for p, _ in samples], 4, [L.stamp(folder, classes)])

    first = key()
    stats = []
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: stats.append(str(p)) or real_stat(p, *a, **k))
    assert key() == first and len(stats) <= 2 * 3  # the split and its 2 class folders (twice): no image is stat'ed
    monkeypatch.undo()
    (root / "train" / "a" / "1.png").rename(root / "train" / "a" / "9.png")
    assert key() != first


WALKS = """
import sys, json
import kmim.data.listing as L
from kmim.config import load_config
from kmim.dist import get_rank, in_process_group
from kmim.resolve import check_images

calls = []
real = L.walk
L.walk = lambda folder: calls.append(folder) or real(folder)

def work():
    cfg = load_config(None, ["data.name=imagefolder", f"data.root={sys.argv[1]}", "data.img_size=16"])
    check_images(cfg, ("train", "test"), __import__("pathlib").Path(sys.argv[2]), progress=False, min_side=1)
    from kmim.data import build_dataset
    n = len(build_dataset(cfg.data, "train")[0])
    json.dump({"walks": len(calls), "train": n}, open(f"{sys.argv[2]}/rank{get_rank()}.json", "w"))

in_process_group(work)
"""


@pytest.mark.slow  # ~15 s: 2 gloo processes
def test_under_two_processes_rank_0_walks_and_the_other_rank_receives_the_listing(tmp_path):
    import json
    import subprocess
    import sys

    root = _folder(tmp_path / "data")
    (tmp_path / "run").mkdir()
    script = tmp_path / "walks.py"
    script.write_text(WALKS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", str(script)]
    proc = subprocess.run(
        [*cmd, str(root), str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ranks = [json.loads((tmp_path / "run" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks == [{"walks": 2, "train": 4}, {"walks": 0, "train": 4}]  # rank 0 walked train/ and val/ once
