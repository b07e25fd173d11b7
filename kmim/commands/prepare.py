"""`kmim prepare SRC --out DST`: a one-time resized copy of an ImageFolder tree (short side 256 by default), so that
training decodes small JPEGs (kmim.data.prepare). Resumable: finished files are kept and the rest are written;
`DST/prepare.json` records the source and settings, and a copy with other settings is refused."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from kmim.data.prepare import PrepareJobs, PrepareSpec, list_images
from kmim.errors import KmimError
from kmim.paths import check_folder_writable
from kmim.progress import progress_bar
from kmim.runinfo import write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="ImageFolder root (e.g. /data/imagenet100 with train/ and val/)")
    p.add_argument("--out", required=True, help="folder of the copy (then use data.root=OUT)")
    p.add_argument("--short-side", type=int, default=256, help="short side of the copy in pixels (default 256)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of resized images (default 90)")
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes that resize (default: all cores; 0 = this process)",
    )
    p.add_argument(
        "--classes",
        metavar="LIST",
        help="copy only the class folders of a named list (in100: the paper's ImageNet-100, CMC's subset of "
        "ImageNet-1k), e.g. kmim prepare /data/imagenet --out /data/in100 --classes in100",
    )
    p.add_argument(
        "--resize-val",
        action="store_true",
        help="resize val/ as well (default: val/ is copied byte for byte, so evaluation reads the original images)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _check(src: Path, dst: Path, spec: PrepareSpec, *, workers: int, classes: str | None = None) -> dict[str, Any]:
    if not src.is_dir():
        raise KmimError(f"{src} is not a folder: give the ImageFolder root (with train/ and val/)")
    if not 16 <= spec.short_side <= 4096:
        raise KmimError(f"--short-side={spec.short_side} is not valid: must be in [16, 4096]")
    if not 1 <= spec.quality <= 100:
        raise KmimError(f"--quality={spec.quality} is not valid: must be in [1, 100]")
    if workers < 0:
        raise KmimError(f"--workers={workers} is not valid: must be >= 0 (0 resizes in this process)")
    if classes is not None:
        from kmim.data.subsets import class_list

        class_list(classes)  # an unknown name is refused here, before anything is written
    s, d = src.resolve(), dst.resolve()
    if d == s or s in d.parents or d in s.parents:
        raise KmimError(f"--out {dst} overlaps the source {src}: write the copy to a separate folder")
    record = {
        "source": str(s),
        "short_side": spec.short_side,
        "quality": spec.quality,
        "classes": classes,
        "resize_val": spec.resize_val,
    }
    saved = dst / "prepare.json"
    if saved.is_file():
        old = {"resize_val": True, **json.loads(saved.read_text())}  # copies made before the option resized val/
        if {k: old.get(k) for k in record} != record:
            raise KmimError(f"{dst} holds a copy made with other settings ({saved}): choose another --out")
    elif dst.exists() and any(dst.iterdir()):
        raise KmimError(f"{dst} is not empty and holds no prepare.json: choose an empty or new --out folder")
    check_folder_writable(dst)
    return record


def _subset(src: Path, files: list[Path], name: str) -> list[Path]:
    """The files under SPLIT/<wnid>/ for the wnids of the named list; every listed class must be in each split."""
    from kmim.data.subsets import class_list

    wanted = set(class_list(name))
    for split in sorted({f.parts[0] for f in files if len(f.parts) > 2}):
        have = {p.name for p in (src / split).iterdir() if p.is_dir()}
        missing = sorted(wanted - have)
        if missing:
            raise KmimError(
                f"{src / split} lacks {len(missing)} of the {len(wanted)} {name} classes (first: {missing[0]}): "
                "give the full ImageNet-1k folder (train/ and val/ with one folder per wnid)"
            )
    return [f for f in files if len(f.parts) > 2 and f.parts[1] in wanted]


def run(args: argparse.Namespace) -> int:
    src, dst = Path(args.src).expanduser(), Path(args.out).expanduser()
    spec = PrepareSpec(args.short_side, args.quality, resize_val=args.resize_val)
    record = _check(src, dst, spec, workers=args.workers, classes=args.classes)
    files = list_images(src)
    if args.classes:
        files = _subset(src, files, args.classes)
    if not files:
        raise KmimError(f"{src} holds no image files: give the ImageFolder root")
    dst.mkdir(parents=True, exist_ok=True)
    write_json(dst / "prepare.json", {**record, "files": len(files), "complete": False})
    loader = DataLoader(
        PrepareJobs(src, dst, files, spec=spec),
        batch_size=None,
        num_workers=args.workers,
        prefetch_factor=4 if args.workers else None,
    )
    written = 0
    for size, problem in progress_bar(loader, total=len(files), desc="prepare", unit="img", disable=args.quiet):
        if problem is not None:
            raise KmimError(f"{problem}; the files written so far are kept, rerun to continue")
        written += size
    write_json(dst / "prepare.json", {**record, "files": len(files), "complete": True})
    print(
        f"prepared {len(files):,} images under {dst} (short side {spec.short_side}"
        f"{'' if spec.resize_val else ', val/ as it is'}, {written / 2**20:.1f} MiB written this run): "
        f"use data.root={dst}"
    )
    return 0
