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
    assert (dst / "val/b/1.JPEG").read_bytes() == (src / "val/b/1.JPEG").read_bytes()  # val/ kept as it is
    assert (dst / "val/a/0.JPEG").read_bytes() == (src / "val/a/0.JPEG").read_bytes()  # (300 x 200: not resized)
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
    both = tmp_path / "both"
    assert main(["prepare", str(src), "--out", str(both), "--short-side", "64", "--resize-val", "-q"]) == 0
    assert Image.open(both / "val/b/1.JPEG").size == (64, 80) and Image.open(both / "val/a/0.JPEG").size == (96, 64)


def test_an_image_cut_past_its_header_is_refused_not_copied(tmp_path, capsys):
    src = _folder(tmp_path / "src")
    cut = src / "val/a/1.JPEG"  # copied as it is (val/): decoded in full first
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    dst = tmp_path / "dst"
    assert main(["prepare", str(src), "--out", str(dst), "--workers", "0", "--short-side", "64", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "val/a/1.JPEG: cannot read the image" in err[0]
    assert not (dst / "val/a/1.JPEG").exists() and json.loads((dst / "prepare.json").read_text())["complete"] is False


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


def test_prepare_cuts_the_in100_subset_and_training_warns_on_other_classes(tmp_path, capsys):
    """`--classes in100` copies only the 100 CMC wnids (each split must hold all of them); a run whose preset names
    the list warns in one line when data.root holds other classes."""
    from PIL import Image as PILImage

    from kmim.cli import main
    from kmim.config import DataConfig
    from kmim.data import build_dataset
    from kmim.data.subsets import class_list

    wnids = class_list("in100")
    assert len(wnids) == 100 == len(set(wnids)) and wnids[0] == "n02869837"
    src = tmp_path / "in1k"
    for split in ("train", "val"):
        for w in [*wnids, "n99999999"]:
            (src / split / w).mkdir(parents=True)
            PILImage.new("RGB", (20, 20)).save(src / split / w / "a.JPEG")
    assert (
        main(["prepare", str(src), "--out", str(tmp_path / "in100"), "--classes", "in100", "--workers", "0", "-q"]) == 0
    )
    assert sorted(p.name for p in (tmp_path / "in100" / "train").iterdir()) == sorted(wnids)
    assert main(["prepare", str(src), "--out", str(tmp_path / "x"), "--classes", "in99", "-q"]) == 2
    assert not (tmp_path / "x").exists()
    capsys.readouterr()
    build_dataset(DataConfig(name="imagefolder", root=str(src), img_size=16, class_list="in100"), "train")
    err = capsys.readouterr().err
    assert "holds 101 classes, not the in100 list (0 of its 100 missing, 1 others)" in err
    build_dataset(
        DataConfig(name="imagefolder", root=str(tmp_path / "in100"), img_size=16, class_list="in100"), "train"
    )
    assert capsys.readouterr().err == ""
