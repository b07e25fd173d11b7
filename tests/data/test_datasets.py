import numpy as np
import pytest
import torch
from PIL import Image

from kmim.config import DataConfig
from kmim.data import build_dataset, stack_dataset
from kmim.data.mnist5k import load_mnist5k
from kmim.errors import KmimError


def test_mnist5k_split_is_fixed_and_stratified():
    xtr, ytr = load_mnist5k("train")
    xte, yte = load_mnist5k("test")
    assert xtr.shape == (4000, 28, 28) and xte.shape == (1000, 28, 28) and xtr.dtype == np.uint8
    assert np.bincount(ytr).tolist() == [400] * 10 and np.bincount(yte).tolist() == [100] * 10
    xall, _ = load_mnist5k("all")
    rows = {r.tobytes() for r in xall.reshape(5000, -1)}
    assert len(rows) > 4990  # real, distinct digits
    assert xtr.max() == 255 and xtr.min() == 0


def test_mnist5k_eval_view_is_padded_and_normalized():
    ds, info = build_dataset(DataConfig(), "test")
    x, y = ds[0]
    assert x.shape == (1, 32, 32) and info.classes[y] == str(y)
    background = (0 - 0.1307) / 0.3081
    assert torch.allclose(x[:, :2], torch.full_like(x[:, :2], background))  # the 2-pixel pad is background


def test_pretrain_view_is_random_and_eval_view_fixed():
    cfg = DataConfig()
    train, _ = build_dataset(cfg, "train", train=True)
    evalds, _ = build_dataset(cfg, "train")
    torch.manual_seed(0)
    views = [train[3][0] for _ in range(4)]
    assert any(not torch.equal(views[0], v) for v in views[1:])
    assert torch.equal(evalds[3][0], evalds[3][0])


def _img(path, size=(20, 20)):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


def test_imagefolder_reads_local_folders(tmp_path):
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            _img(tmp_path / split / c / "a.png")
    ds, info = build_dataset(DataConfig(name="imagefolder", root=str(tmp_path), img_size=16, aug="rrc"), "train", True)
    x, _y = ds[0]
    assert x.shape == (3, 16, 16) and info.classes == ("cat", "dog") and info.channels == 3
    xs, ys = stack_dataset(build_dataset(DataConfig(name="imagefolder", root=str(tmp_path), img_size=16), "test")[0])
    assert xs.shape == (2, 3, 16, 16) and ys.tolist() == [0, 1]


@pytest.mark.parametrize(
    "layout, message",
    [
        ("missing", "does not exist or is not a folder"),
        ("no_train", "needs train/ and val/"),
        ("no_classes", "has no class folders"),
        ("empty_class", "every class folder needs at least one image"),
    ],
)
def test_imagefolder_layout_errors(tmp_path, layout, message):
    root = tmp_path / "data"
    if layout != "missing":
        root.mkdir()
    if layout in ("no_classes", "empty_class"):
        (root / "train").mkdir()
    if layout == "empty_class":
        (root / "train" / "cat").mkdir()
        _img(root / "train" / "cat" / "a.png")
        (root / "train" / "dog").mkdir()
    with pytest.raises(KmimError, match=message):
        build_dataset(DataConfig(name="imagefolder", root=str(root)), "train")


def test_imagefolder_corrupt_and_too_small_images(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    ds, _ = build_dataset(DataConfig(name="imagefolder", root=str(tmp_path), img_size=16), "train", min_side=4)
    with pytest.raises(KmimError, match=r"bad.jpg: unreadable or corrupt image"):
        ds[0]
    (tmp_path / "train" / "cat" / "bad.jpg").unlink()
    _img(tmp_path / "train" / "cat" / "tiny.png", size=(3, 3))
    ds, _ = build_dataset(DataConfig(name="imagefolder", root=str(tmp_path), img_size=16), "train", min_side=4)
    with pytest.raises(KmimError, match=r"tiny.png: image is 3x3, smaller than one patch \(4\)"):
        ds[0]


def test_cifar_needs_a_valid_local_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with pytest.raises(KmimError, match="no valid CIFAR python-pickle folder 'cifar-10-batches-py'"):
        build_dataset(DataConfig(name="cifar10", root=str(tmp_path)), "train")
    with pytest.raises(KmimError, match="data.root is not set"):
        build_dataset(DataConfig(name="cifar10"), "train")


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(
        KmimError, match="valid names are cifar10, cifar100, imagefolder, imagenette, mnist5k, synthetic"
    ):
        build_dataset(DataConfig(name="imagenet"), "train")
