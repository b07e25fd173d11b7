"""data.cache=ram (kmim.data.decoded) gives the JPEG path's views, bit for bit; the pretraining loader ships uint8
that normalize_batch turns into the per-image numbers; python_rngs=False draws the same views."""

import torch

from kmim.config import DataConfig
from kmim.data import build_dataset
from kmim.data.datasets import IMAGENET_MEAN, IMAGENET_STD
from kmim.data.decoded import DecodedImages
from kmim.data.sampling import SeededViews
from kmim.data.transforms import eval_transform, normalize_batch


def _cfg(root, cache="none"):
    return DataConfig(name="imagenette", root=str(root), img_size=64, aug="rrc", hflip=True, cache=cache)


def test_ram_cache_views_equal_the_jpeg_views(imagenette_root):
    for train, split in ((True, "train"), (False, "train"), (False, "test")):
        jpeg, _ = build_dataset(_cfg(imagenette_root), split, train=train, min_side=8)
        ram, _ = build_dataset(_cfg(imagenette_root, "ram"), split, train=train, min_side=8)
        assert isinstance(ram, DecodedImages) and ram.samples == jpeg.samples
        a, b = SeededViews(jpeg, 3, 64, python_rngs=False), SeededViews(ram, 3, 64, python_rngs=False)
        for i in range(len(jpeg)):
            for epoch in (0, 5):
                (xa, ya, na), (xb, yb, nb) = a[(i, epoch)], b[(i, epoch)]
                assert torch.equal(xa, xb) and ya == yb and torch.equal(na, nb)


def test_the_cache_decodes_a_split_once_per_process(imagenette_root, monkeypatch):
    build_dataset(_cfg(imagenette_root, "ram"), "test")
    calls = []
    monkeypatch.setattr("kmim.data.decoded._decode_all", lambda *a, **k: calls.append(1))
    ds, _ = build_dataset(_cfg(imagenette_root, "ram"), "test", train=True)
    assert calls == [] and ds[0][0].dtype == torch.uint8


def test_pretraining_views_are_uint8_and_normalize_on_the_device_to_the_eval_numbers(imagenette_root):
    train, _ = build_dataset(_cfg(imagenette_root), "train", train=True)
    x = torch.stack([train[i][0] for i in range(4)])  # (4, 3, 64, 64) uint8
    assert x.dtype == torch.uint8
    tail = eval_transform(_cfg(imagenette_root), IMAGENET_MEAN, IMAGENET_STD, native=None).transforms[-2:]
    per_image = torch.stack([tail[1](tail[0](img)) for img in x])  # ToDtype then Normalize, image by image
    assert torch.equal(normalize_batch(x, IMAGENET_MEAN, IMAGENET_STD), per_image)


def test_torch_only_seeding_draws_the_views_of_full_seeding(imagenette_root):
    train, _ = build_dataset(_cfg(imagenette_root), "train", train=True)
    full, fast = SeededViews(train, 0, 64), SeededViews(train, 0, 64, python_rngs=False)
    for i in range(0, len(train), 7):
        assert all(torch.equal(u, v) for u, v in zip(full[(i, 2)][::2], fast[(i, 2)][::2], strict=True))


def test_synthetic_pretraining_views_stay_uint8_too():
    ds, _ = build_dataset(DataConfig(name="synthetic", img_size=16), "train", train=True)
    assert ds[0][0].dtype == torch.uint8
