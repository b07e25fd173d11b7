"""Imagenette as a dataset (issue 27): the class check at the door, human names, and the split check that every
ImageFolder now has. The photos come from ../shared/data (skipped when absent)."""

import shutil

import pytest

from kmim.config import DataConfig, load_config
from kmim.data import build_dataset
from kmim.data.datasets import IMAGENETTE
from kmim.errors import KmimError
from kmim.resolve import check_run_config


def _cfg(root, **kw):
    return DataConfig(name="imagenette", root=str(root), img_size=64, aug="rrc", hflip=True, **kw)


def test_imagenette_reads_the_official_layout_with_human_names(imagenette_root):
    train, info = build_dataset(_cfg(imagenette_root), "train", train=True, min_side=8)
    test, _ = build_dataset(_cfg(imagenette_root), "test")
    assert info.classes == tuple(IMAGENETTE.values()) and info.classes[0] == "tench" and len(info.classes) == 10
    assert len(train) == 40 and len(test) == 20 and info.channels == 3
    x, y = train[0]
    assert x.shape == (3, 64, 64) and y == 0
    assert sorted({y for _, y in test.samples}) == list(range(10))  # val labels number the same wnids


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: shutil.rmtree(r / "val"), "val does not exist"),
        (lambda r: shutil.rmtree(r / "train" / "n01440764") or shutil.rmtree(r / "val" / "n01440764"), "1 of its 10"),
        (lambda r: (r / "train" / "cat").mkdir() or (r / "val" / "cat").mkdir(), "1 other folders: cat"),
    ],
)
def test_a_folder_that_is_not_imagenette_is_refused_in_one_line(imagenette_root, tmp_path, damage, message):
    root = _copy(imagenette_root, tmp_path / "copy")
    damage(root)
    with pytest.raises(KmimError, match=message) as e:
        build_dataset(_cfg(root), "train")
    assert "\n" not in str(e.value) and "data.name=imagenette" in str(e.value)


def test_imagefolder_refuses_splits_with_different_classes(imagenette_root, tmp_path):
    """Each split numbers its classes on its own: a val/ missing one class would score every later class against
    the wrong label (found from outside: 66.7 % and 50 % on data a working encoder separates)."""
    root = _copy(imagenette_root, tmp_path / "copy")
    shutil.rmtree(root / "val" / "n02102040")
    for split in ("train", "test"):
        with pytest.raises(KmimError, match=r"train/ and val/ hold different class folders \(only in train/: n0210"):
            build_dataset(DataConfig(name="imagefolder", root=str(root), img_size=64), split)


def test_ram_cache_is_refused_for_data_already_in_memory():
    with pytest.raises(KmimError, match="data.cache=ram reads image folders"):
        check_run_config(load_config(None, ["data.cache=ram"]))
    with pytest.raises(Exception, match="data.cache"):
        load_config(None, ["data.cache=disk"])
