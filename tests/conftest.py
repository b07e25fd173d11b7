import os
import tarfile
from pathlib import Path

import pytest
import torch

from kmim.config import load_config

TINY = [
    "data.name=synthetic",
    "data.img_size=16",
    "data.synthetic_per_class=8",
    "data.synthetic_classes=3",
    "model.patch_size=4",
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "model.decoder_dim=32",
    "model.decoder_depth=1",
    "model.decoder_heads=2",
    "tokenizer.k=8",
    "tokenizer.niter=5",
    "train.epochs=2",
    "train.warmup_epochs=1",
    "train.batch_size=8",
    "eval.linear.epochs=5",
    "eval.linear.lrs=[0.1]",
]


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)  # tiny tensors: threading only adds overhead and nondeterminism


@pytest.fixture
def tiny_overrides(tmp_path):
    return [*TINY, f"out_dir={tmp_path / 'runs'}"]


@pytest.fixture
def tiny_cfg(tiny_overrides):
    return load_config(None, tiny_overrides)


IMAGENETTE_TAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenette224.tar"
IMAGENETTE_PER_CLASS = {"train": 4, "val": 2}  # images per class and split in the test copy (60 in all)


@pytest.fixture(scope="session")
def imagenette_root(tmp_path_factory):
    """A few dozen real Imagenette photos (224 px) in the official layout, taken from ../shared/data (never part of
    the repository: ImageNet's terms); the test is skipped, saying why, when the file is absent (a user's clone)."""
    tar_path = Path(os.environ.get("KMIM_IMAGENETTE_TAR", IMAGENETTE_TAR))
    if not tar_path.is_file():
        pytest.skip(f"{tar_path} is absent (Imagenette is not part of kmim; CI has it)")
    root = tmp_path_factory.mktemp("imagenette")
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(tar_path) as tar:
        for m in tar:
            parts = Path(m.name).parts  # imagenette224/<split>/<wnid>/<file>
            if not m.isfile() or len(parts) != 4:
                continue
            key = (parts[1], parts[2])
            if taken.get(key, 0) < IMAGENETTE_PER_CLASS[parts[1]]:
                taken[key] = taken.get(key, 0) + 1
                dst = root / parts[1] / parts[2] / parts[3]
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(tar.extractfile(m).read())
    return root
