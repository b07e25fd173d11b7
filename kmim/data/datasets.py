"""Dataset registry. Every dataset is read from package data or a local path; nothing is downloaded."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets as tvd

from kmim.config import DataConfig
from kmim.data.decoded import decoded_folder
from kmim.data.listing import ListedImageFolder
from kmim.data.mnist5k import load_mnist5k
from kmim.data.subsets import warn_if_other_classes
from kmim.data.transforms import eval_transform, pretrain_transform
from kmim.errors import KmimError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SPLITS = ("train", "test")
SPLIT_FOLDERS = {"train": "train", "test": "val"}  # an ImageFolder root's split folders
IMAGENETTE = {  # Imagenette's 10 ImageNet wnids and their names (fastai/imagenette README), in wnid order
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888257": "parachute",
}
FOLDER_DATASETS = ("imagefolder", "imagenette")  # read from data.root's train/ and val/ (header scan, RAM cache)


@dataclass(frozen=True)
class DatasetInfo:
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    native_size: int | None  # side of every image when fixed (digits, CIFAR), None for photo folders
    classes: tuple[str, ...]


class ArrayDataset(Dataset[tuple[torch.Tensor, int]]):
    """In-memory images (N, C, H, W) uint8 with integer labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable[..., Any] | None = None) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.images[i]  # (C, H, W) uint8
        return (self.transform(img) if self.transform else img), int(self.labels[i])


def _mnist5k(cfg: DataConfig, split: str) -> tuple[Dataset[Any], DatasetInfo]:
    x, y = load_mnist5k(split)
    info = DatasetInfo(1, (0.1307,), (0.3081,), 28, tuple(str(i) for i in range(10)))
    return ArrayDataset(torch.from_numpy(x)[:, None], torch.from_numpy(y)), info


def synthetic_arrays(per_class: int, classes: int, size: int, *, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Tiny seeded dataset: each class is a bright square at its own place on a noisy background."""
    rng = np.random.default_rng(0 if split == "train" else 1)
    n = per_class * classes
    y = np.repeat(np.arange(classes), per_class)
    x = rng.integers(0, 40, size=(n, 1, size, size)).astype(np.uint8)
    side = max(size // 3, 2)
    for i, c in enumerate(y):
        r0 = (c * side // 2 + rng.integers(0, 2)) % (size - side)
        c0 = ((c * 5) % (size - side) + rng.integers(0, 2)) % (size - side)
        x[i, 0, r0 : r0 + side, c0 : c0 + side] = 200
    return x, y


def _synthetic(cfg: DataConfig, split: str) -> tuple[Dataset[Any], DatasetInfo]:
    x, y = synthetic_arrays(cfg.synthetic_per_class, cfg.synthetic_classes, cfg.img_size, split=split)
    info = DatasetInfo(1, (0.5,), (0.25,), cfg.img_size, tuple(str(i) for i in range(cfg.synthetic_classes)))
    return ArrayDataset(torch.from_numpy(x), torch.from_numpy(y)), info


def _root(cfg: DataConfig) -> Path:
    if not cfg.root:
        raise KmimError(f"data.root is not set: data.name={cfg.name} reads a local folder (data.root=/path/to/data)")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise KmimError(f"data.root {root} does not exist or is not a folder")
    return root


def _cifar(cfg: DataConfig, split: str, hundred: bool) -> tuple[Dataset[Any], DatasetInfo]:
    cls = tvd.CIFAR100 if hundred else tvd.CIFAR10
    root = _root(cfg)
    try:
        ds = cls(str(root), train=split == "train", download=False)
    except RuntimeError:
        folder = "cifar-100-python" if hundred else "cifar-10-batches-py"
        raise KmimError(
            f"{root}: no valid CIFAR python-pickle folder '{folder}' (missing or corrupted files)"
        ) from None
    x = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32) uint8
    info = DatasetInfo(3, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 32, tuple(ds.classes))
    return ArrayDataset(x, torch.as_tensor(ds.targets)), info


class _CheckedLoader:
    """PIL loader for ImageFolder: any PIL mode becomes correct RGB; unreadable or too-small images are one-line errors.

    RGB and L images convert exactly as `img.convert("RGB")`; the other modes are handled by `_to_rgb`.
    """

    def __init__(self, min_side: int) -> None:
        self.min_side = min_side

    def __call__(self, path: str) -> Image.Image:
        img = _to_rgb(_load_image(path), path)
        if min(img.size) < self.min_side:
            raise KmimError(f"{path}: image is {img.size[0]}x{img.size[1]}, smaller than one patch ({self.min_side})")
        return img


DECODE_ERRORS = (OSError, SyntaxError, EOFError, ValueError, struct.error)  # OSError covers UnidentifiedImageError
_INT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA")
_PREMULTIPLIED_MODES = ("RGBa", "La")


def _load_image(path: str) -> Image.Image:
    """Open and fully decode `path`. PIL decodes lazily, so a truncated file fails only at load(): force it here."""
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()
    except Image.DecompressionBombError:
        raise KmimError(
            f"{path}: image has more pixels than PIL's safety limit: shrink it or raise PIL.Image.MAX_IMAGE_PIXELS"
        ) from None
    except DECODE_ERRORS as e:
        raise KmimError(f"{path}: unreadable or corrupt image ({type(e).__name__}): remove or replace it") from None
    return img


def _to_rgb(img: Image.Image, path: str) -> Image.Image:
    """An 8-bit RGB copy of `img` whatever its PIL mode.

    - 16-bit gray (I;16*, and I holding 0..65535): v / 257 rounded, so 65535 -> 255 (convert() would clip to white).
    - F (float gray): values in [0, 1] when the image's max is <= 1, else in [0, 255]; scaled, rounded, clipped.
    - Transparency (RGBA, LA, PA, P with a transparent color): composited onto black. Black is the background of
      digit data sets (MNIST) and the fill torchvision uses for padding and rotation in ImageNet pipelines, so a
      transparent area reads as empty background, not as a bright shape (white) or a made-up color; premultiplied
      RGBa/La already hold exactly that composite.
    - Everything else (RGB, L, 1, P, CMYK, YCbCr, LAB, HSV, RGBX): PIL's convert("RGB"). Embedded ICC profiles and
      a tRNS color of RGB/L images are ignored, as before.
    """
    if img.mode in _INT_MODES:
        return _gray_to_rgb(_scale_uint16(np.asarray(img), path))
    if img.mode == "F":
        return _gray_to_rgb(_scale_float(np.asarray(img)))
    if img.mode in _PREMULTIPLIED_MODES:
        color = np.asarray(img)[..., :-1]
        return _gray_to_rgb(color[..., 0]) if img.mode == "La" else Image.fromarray(np.ascontiguousarray(color))
    if img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
        return _on_black(img.convert("RGBA"))
    try:
        return img.convert("RGB")
    except ValueError:
        raise KmimError(f"{path}: PIL image mode {img.mode} cannot be converted to RGB: save it as RGB") from None


def _scale_uint16(values: np.ndarray, path: str) -> np.ndarray:
    """16-bit gray values 0..65535 -> 0..255 (v / 257, rounded half up)."""
    v = values.astype(np.int64)
    if v.size and (v.min() < 0 or v.max() > 65535):
        raise KmimError(f"{path}: integer image with values outside 0..65535: save it as 8- or 16-bit")
    return ((2 * v + 257) // 514).astype(np.uint8)


def _scale_float(values: np.ndarray) -> np.ndarray:
    """Float gray -> 0..255: times 255 when the max is <= 1 (a [0, 1] image), else as is; rounded, clipped; NaN -> 0."""
    v = np.nan_to_num(values.astype(np.float64), nan=0.0)
    scale = 255.0 if v.size and v.max() <= 1.0 else 1.0
    return np.clip(np.floor(v * scale + 0.5), 0, 255).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(gray, dtype=np.uint8)).convert("RGB")


def _on_black(rgba: Image.Image) -> Image.Image:
    """Composite an RGBA image onto black: each color times alpha / 255, rounded half up."""
    a = np.asarray(rgba).astype(np.uint32)
    rgb = (a[..., :3] * a[..., 3:] + 127) // 255
    return Image.fromarray(rgb.astype(np.uint8))


def _class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def _split_folder(cfg: DataConfig, split: str) -> Path:
    """train/ or val/ of data.root, with one line when it is missing, has no class folders, or numbers other classes
    than the other split (ImageFolder numbers each split's classes on its own: the labels would not match)."""
    root = _root(cfg)
    folder = root / SPLIT_FOLDERS[split]
    if not folder.is_dir():
        raise KmimError(f"{folder} does not exist: an ImageFolder root needs train/ and val/ with one folder per class")
    classes = _class_folders(folder)
    if not classes:
        raise KmimError(f"{folder} has no class folders: put images in {folder}/<class>/*.jpg")
    if cfg.class_list:
        warn_if_other_classes(folder, classes, cfg.class_list)
    other = root / SPLIT_FOLDERS["test" if split == "train" else "train"]
    if other.is_dir() and (theirs := _class_folders(other)) != classes:
        sides = [(folder, sorted(set(classes) - set(theirs))), (other, sorted(set(theirs) - set(classes)))]
        raise KmimError(
            f"{root}: train/ and val/ hold different class folders ({_diff(sides)}): "
            "each split numbers its classes on its own, so the labels would not match; give both splits the same "
            "class folders"
        )
    return folder


def _diff(sides: list[tuple[Path, list[str]]]) -> str:
    """'only in train/: a, b; only in val/: c' for each (folder, the class folders only it has) that has any."""
    parts = [
        f"only in {p.name}/: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}" for p, names in sides if names
    ]
    return "; ".join(parts)


def _imagefolder(cfg: DataConfig, split: str, min_side: int = 1) -> tuple[Dataset[Any], DatasetInfo]:
    folder = _split_folder(cfg, split)
    try:
        ds: Any = ListedImageFolder(str(folder), loader=_CheckedLoader(min_side), allow_empty=False)
    except FileNotFoundError as e:
        raise KmimError(f"{folder}: {str(e).splitlines()[0]}: every class folder needs at least one image") from None
    if cfg.cache == "ram":
        ds = decoded_folder(ds, num_workers=cfg.num_workers, min_side=min_side)
    return ds, DatasetInfo(3, IMAGENET_MEAN, IMAGENET_STD, None, tuple(ds.classes))


def _imagenette(cfg: DataConfig, split: str, min_side: int = 1) -> tuple[Dataset[Any], DatasetInfo]:
    """Imagenette (any of its sizes: imagenette2, -160, -320, or a `kmim prepare` copy): an ImageFolder whose two
    splits hold exactly the 10 wnids of IMAGENETTE; class names are their human names."""
    root = _root(cfg)
    for name in SPLIT_FOLDERS.values():
        folder = root / name
        if not folder.is_dir():
            raise KmimError(
                f"data.name=imagenette: {folder} does not exist: data.root must be an Imagenette folder with train/ "
                "and val/ (e.g. imagenette2-160 from github.com/fastai/imagenette)"
            )
        found = _class_folders(folder)
        if found != sorted(IMAGENETTE):
            missing, extra = sorted(set(IMAGENETTE) - set(found)), sorted(set(found) - set(IMAGENETTE))
            raise KmimError(
                f"data.name=imagenette: {folder} is not Imagenette's ({len(missing)} of its 10 wnids missing"
                f"{': ' + ', '.join(missing[:3]) if missing else ''}; {len(extra)} other folders"
                f"{': ' + ', '.join(extra[:3]) if extra else ''}): point data.root at Imagenette, or use "
                "data.name=imagefolder for another dataset"
            )
    ds, info = _imagefolder(cfg, split, min_side)
    return ds, replace(info, classes=tuple(IMAGENETTE[w] for w in info.classes))


DATASETS: dict[str, Callable[[DataConfig, str], tuple[Dataset[Any], DatasetInfo]]] = {
    "mnist5k": _mnist5k,
    "synthetic": _synthetic,
    "cifar10": lambda cfg, split: _cifar(cfg, split, hundred=False),
    "cifar100": lambda cfg, split: _cifar(cfg, split, hundred=True),
    "imagefolder": _imagefolder,
    "imagenette": _imagenette,
}


def build_dataset(
    cfg: DataConfig, split: str, train: bool = False, *, min_side: int = 1
) -> tuple[Dataset[Any], DatasetInfo]:
    """The `split` ("train" | "test") of dataset `cfg.name` with the pretraining (train=True) or eval transform."""
    if cfg.name not in DATASETS:
        raise KmimError(f"data.name={cfg.name!r} is unknown: valid names are {', '.join(sorted(DATASETS))}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if cfg.name in FOLDER_DATASETS:
        ds, info = (_imagenette if cfg.name == "imagenette" else _imagefolder)(cfg, split, min_side)
    else:
        ds, info = DATASETS[cfg.name](cfg, split)
    make = pretrain_transform if train else eval_transform
    tf = make(cfg, info.mean, info.std, native=info.native_size)
    cast(Any, ds).transform = tf  # ArrayDataset and torchvision datasets both apply .transform to each image
    return ds, info
