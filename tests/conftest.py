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
    "eval.probe_epochs=5",
    "eval.probe_lrs=[0.1]",
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
