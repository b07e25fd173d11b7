"""`data.cache=ram`: an ImageFolder split decoded once into one uint8 buffer that DataLoader workers share.

Every image is decoded by the folder's own loader (the RGB conversion and the one-line errors of
`kmim.data.datasets`), its pixels (H, W, 3) appended to one flat uint8 tensor in shared memory; item i rebuilds the
same RGB PIL image from its slice (`Image.fromarray`, no decode) and applies the split's transform. The views are
therefore those of the JPEG path for the same files, seed and epoch, bit for bit (tests/data/test_decoded.py), and
the cost per item is the augmentation alone. Size: 3 * H * W bytes per image (Imagenette: 0.15 GB for a 72-px copy,
1.4 GB at 224 px); meant for small datasets. A split is decoded once per process (kept for the process's life:
the train split read for pretraining, then for features, is decoded once), in `data.num_workers` workers, with a
progress bar.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from kmim.data.workers import quiet_worker
from kmim.errors import KmimError
from kmim.progress import progress_bar

_DECODED: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # folder -> (pixels, offsets, shapes)


class _Decode(Dataset[np.ndarray]):
    def __init__(self, paths: list[str], loader: Callable[[str], Image.Image]) -> None:
        self.paths, self.loader = paths, loader

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.loader(self.paths[i]))  # (H, W, 3) uint8


def _decode_all(
    paths: list[str], loader: Callable[[str], Image.Image], *, num_workers: int, desc: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pixels (sum of H*W*3,) uint8 in shared memory, offsets (N,) int64, shapes (N, 2) int64 of (H, W))."""
    arrays = DataLoader(
        _Decode(paths, loader),
        batch_size=None,
        num_workers=num_workers,
        collate_fn=lambda a: a,
        shuffle=False,
        worker_init_fn=quiet_worker,
    )
    chunks, shapes = [], []
    for arr in progress_bar(arrays, total=len(paths), desc=desc, unit="img"):
        chunks.append(torch.from_numpy(np.array(arr, copy=True)).flatten())  # PIL arrays are read-only
        shapes.append(arr.shape[:2])
    sizes = torch.tensor([c.numel() for c in chunks], dtype=torch.int64)
    offsets = torch.cumsum(sizes, 0) - sizes
    pixels = torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.uint8)
    pixels.share_memory_()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
    return pixels, offsets, torch.tensor(shapes, dtype=torch.int64).reshape(-1, 2)


class DecodedImages(Dataset[tuple[Any, int]]):
    """An ImageFolder's samples served from a decoded uint8 buffer; `classes`, `samples`, `targets` as ImageFolder's
    and a `transform` applied to each RGB PIL image."""

    def __init__(self, folder: Any, buffer: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        """`buffer`: (pixels, offsets, shapes) as `_decode_all` returns them."""
        self.classes, self.samples, self.targets = folder.classes, folder.samples, folder.targets
        self.root = folder.root
        self.pixels, self.offsets, self.shapes = buffer
        self.transform: Callable[..., Any] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, i: int) -> Image.Image:
        """Image i as the folder's loader returned it (RGB)."""
        h, w = (int(v) for v in self.shapes[i])
        start = int(self.offsets[i])
        return Image.fromarray(self.pixels[start : start + h * w * 3].view(h, w, 3).numpy(), mode="RGB")

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img = self.image(i)
        return (self.transform(img) if self.transform else img), self.targets[i]


def decoded_folder(folder: Any, *, num_workers: int, min_side: int) -> DecodedImages:
    """`folder` (a torchvision ImageFolder with kmim's checked loader) decoded into memory (once per process)."""
    key = str(Path(folder.root).resolve())
    if key not in _DECODED:
        paths = [p for p, _ in folder.samples]
        name = Path(folder.root).name
        _DECODED[key] = _decode_all(paths, folder.loader, num_workers=num_workers, desc=f"decode {name}/ to RAM")
    pixels, offsets, shapes = _DECODED[key]
    if len(shapes) != len(folder.samples):
        raise KmimError(f"{folder.root}: its files changed while this process ran: start the command again")
    small = int(shapes.min()) if len(shapes) else min_side
    if small < min_side:
        i = int((shapes.min(dim=1).values < min_side).nonzero()[0])
        h, w = (int(v) for v in shapes[i])
        raise KmimError(f"{folder.samples[i][0]}: image is {w}x{h}, smaller than one patch ({min_side})")
    return DecodedImages(folder, (pixels, offsets, shapes))
