"""A one-time resized copy of an ImageFolder tree (`kmim prepare`): every training image with a short side above
`short_side` is decoded (with libjpeg's DCT-domain downscaling via PIL's `draft`), resized with antialiasing to that
short side and written as JPEG; smaller images, and by default every file of val/ (so the probes and fine-tuning are
scored on the original validation images, as published numbers are), are copied byte for byte. Every file is
decoded in full first, so an image damaged past its header is refused here rather than copied. File names and
folders are kept, so the copy lists the same samples in the same order (the per-sample seeds, hence the views, are
unchanged). Decoding a 256-px copy costs a fraction of a full-size ImageNet JPEG (~500 x 375), which is what the
training loader spends its cores on.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class PrepareSpec:
    short_side: int = 256  # target short side in pixels
    quality: int = 90  # JPEG quality of resized images
    resize_val: bool = False  # also resize val/ (False: val/ is copied byte for byte)


def list_images(src: Path) -> list[Path]:
    """Every image file under src (relative paths, sorted): what the copy will hold."""
    return sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) with the short side `short_side` and the aspect ratio kept (rounded), for an image larger than it."""
    scale = short_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def prepare_one(src: Path, dst: Path, spec: PrepareSpec, *, copy: bool = False) -> tuple[int, str | None]:
    """Write the resized (or, when small or `copy`, copied) `src` to `dst` through a temporary file: (bytes written,
    None), or (0, what went wrong) for an unreadable image. An existing `dst` is a finished file (every write is a
    rename) and is kept."""
    if dst.exists():
        return 0, None
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    try:
        _write(src, tmp, spec, copy=copy)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        tmp.unlink(missing_ok=True)
        return 0, f"{src}: cannot read the image ({str(e).splitlines()[0]}): remove or replace the file"
    os.replace(tmp, dst)
    return dst.stat().st_size, None


def _write(src: Path, tmp: Path, spec: PrepareSpec, *, copy: bool = False) -> None:
    with Image.open(src) as im:
        if copy or min(im.size) <= spec.short_side:
            im.load()  # the whole image decodes (a file cut or damaged past its header raises here)
            shutil.copyfile(src, tmp)
        else:
            size = resized_size(*im.size, spec.short_side)
            im.draft("RGB", size)  # JPEG: decode at 1/2, 1/4 or 1/8 scale when that stays above `size`
            im.convert("RGB").resize(size, Image.Resampling.BICUBIC, reducing_gap=None).save(
                tmp, "JPEG", quality=spec.quality
            )


class PrepareJobs(Dataset[tuple[int, str | None]]):
    """Item i prepares file i of `files` (for DataLoader workers: each worker resizes its share)."""

    def __init__(self, src: Path, dst: Path, files: list[Path], *, spec: PrepareSpec) -> None:
        self.src, self.dst, self.files, self.spec = src, dst, files, spec

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, str | None]:
        rel = self.files[i]
        copy = not self.spec.resize_val and rel.parts[0] == "val"
        return prepare_one(self.src / rel, self.dst / rel, self.spec, copy=copy)
