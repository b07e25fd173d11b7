"""`kmim prepare`: a resized copy with the same files in the same order; resumable; bad inputs refused."""

import json

from PIL import Image

from kmim.cli import main
from kmim.config import load_config
from kmim.data import build_dataset


def _folder(root):
    for split in ("train", "val"):
        for c, size in (("a", (300, 200)), ("b", (100, 80))):
            d = root / split / c
            d.mkdir(parents=True)
            Image.new("RGB", size, (200, 30, 30)).save(d / "0.JPEG", quality=95)
            Image.new("RGB", size[::-1], (30, 200, 30)).save(d / "1.JPEG", quality=95)
    return root


def test_prepare_resizes_the_short_side_and_keeps_the_samples(tmp_path, capsys):
    src, dst = _folder(tmp_path / "src"), tmp_path / "dst"
    assert main(["prepare", str(src), "--out", str(dst), "--short-side", "64", "--workers", "1", "-q"]) == 0
    assert Image.open(dst / "train/a/0.JPEG").size == (96, 64) and Image.open(dst / "train/a/1.JPEG").size == (64, 96)
    assert (dst / "train/b/0.JPEG").read_bytes() != (src / "train/b/0.JPEG").read_bytes()  # 100 x 80 -> 80 x 64
    assert Image.open(dst / "val/b/1.JPEG").size == (64, 80)
    a, _ = build_dataset(load_config(None, ["data.name=imagefolder", f"data.root={src}"]).data, "train")
    b, _ = build_dataset(load_config(None, ["data.name=imagefolder", f"data.root={dst}"]).data, "train")
    assert [p.split("/")[-2:] for p, _ in a.samples] == [p.split("/")[-2:] for p, _ in b.samples]
    assert json.loads((dst / "prepare.json").read_text())["complete"] is True
    (dst / "val/a/0.JPEG").unlink()  # an interrupted copy: the rerun writes only what is missing
    assert main(["prepare", str(src), "--out", str(dst), "--short-side", "64", "--workers", "0", "-q"]) == 0
    assert (dst / "val/a/0.JPEG").is_file()
    capsys.readouterr()
    assert main(["prepare", str(src), "--out", str(dst), "--short-side", "128"]) == 2
    assert "made with other settings" in capsys.readouterr().err


def test_prepare_refuses_overlapping_folders_and_names_a_bad_image(tmp_path, capsys):
    src = _folder(tmp_path / "src")
    assert main(["prepare", str(src), "--out", str(src / "copy")]) == 2
    assert "overlaps the source" in capsys.readouterr().err
    (src / "train/a/2.JPEG").write_bytes(b"not a jpeg")
    assert (
        main(["prepare", str(src), "--out", str(tmp_path / "dst"), "--workers", "0", "--short-side", "64", "-q"]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train/a/2.JPEG: cannot read the image" in err[0]


def test_a_corrupt_image_stops_pretraining_before_anything_is_written(tmp_path, capsys):
    """MAE targets fit no tokenizer, so the header scan is what reads the split first: one line, no run directory;
    a clean scan is recorded in the run directory and a resume trusts it."""
    import kmim.data.scan as scan
    from tests.conftest import TINY

    src = _folder(tmp_path / "src")
    (src / "train/b/bad.JPEG").write_bytes(b"\xff\xd8 not really a jpeg")
    run = [
        *(o for o in TINY if not o.startswith("data.")),
        "data.name=imagefolder",
        f"data.root={src}",
        "data.img_size=16",
        "train.target=pixels",
        "train.epochs=1",
        "train.warmup_epochs=0",
        "train.batch_size=4",
        f"out_dir={tmp_path / 'runs'}",
        "name=mae",
    ]
    assert main(["pretrain", "-q", *run]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train/b/bad.JPEG: unreadable or corrupt image" in err[0]
    assert not (tmp_path / "runs").exists()
    (src / "train/b/bad.JPEG").unlink()
    assert main(["pretrain", "-q", *run]) == 0
    assert json.loads((tmp_path / "runs/mae/image_scan.json").read_text())["files"] == 4
    calls = []
    real = scan.header_problem
    scan.header_problem = lambda *a: calls.append(a) or real(*a)
    try:
        assert main(["pretrain", "-q", "--resume", str(tmp_path / "runs/mae"), "train.epochs=2"]) == 0
    finally:
        scan.header_problem = real
    assert calls == []  # the same files: the recorded scan is trusted
