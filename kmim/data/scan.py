"""A header scan of an ImageFolder split before any work: every file opens as an image (PIL reads its header, not
its pixels) and is at least one patch wide. Split over processes (rank r takes files r, r + world, ...) and
DataLoader workers, with progress; a clean scan is cached against the file list (its paths and the modification
times of the split and class folders: kmim.data.listing's stamp, no `stat` per image), so a resumed or requeued run
does not scan again. A file rewritten in place under the same name, or whose pixels are damaged past its header, is
found when it is decoded, with the same one-line error.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import DataLoader, Dataset

from kmim.data.datasets import DECODE_ERRORS
from kmim.data.workers import quiet_worker
from kmim.progress import progress_bar

END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}  # what a whole JPEG (EOI) / PNG (IEND chunk) ends with
TAIL = 1024  # bytes read from a file's end to find its marker (trailing padding after it is allowed)


def header_problem(path: str, min_side: int) -> str | None:
    """What is wrong with the image file at `path` (one line), or None. A JPEG or PNG must also hold its end marker
    in its last KiB: a file cut short (an interrupted copy or download, the commonest damage past the header) is
    found here, by one small read, not in the middle of training. Other formats cut short are found when decoded."""
    try:
        with Image.open(path) as im:
            width, height, fmt = *im.size, im.format
    except Image.DecompressionBombError:
        return f"{path}: image has more pixels than PIL's safety limit: shrink it or raise PIL.Image.MAX_IMAGE_PIXELS"
    except DECODE_ERRORS as e:
        return f"{path}: unreadable or corrupt image ({type(e).__name__}): remove or replace it"
    if min(width, height) < min_side:
        return f"{path}: image is {width}x{height}, smaller than one patch ({min_side})"
    if fmt in END_MARKERS and END_MARKERS[fmt] not in _tail(path):
        return f"{path}: the {fmt} file is cut short (no end marker): remove or replace it"
    return None


def _tail(path: str) -> bytes:
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - TAIL))
        return f.read()


class _Headers(Dataset[str]):
    def __init__(self, paths: list[str], min_side: int) -> None:
        self.paths, self.min_side = paths, min_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> str:
        return header_problem(self.paths[i], self.min_side) or ""


def file_list_digest(paths: list[str], stamps: list[tuple[int, ...]]) -> str:
    """sha256 of every path and of the folders' stamps: it changes when a file is added, removed or renamed."""
    h = hashlib.sha256()
    for p in paths:
        h.update(f"{p}\n".encode())
    for st in stamps:
        h.update(f"{st}\n".encode())
    return h.hexdigest()


def scan_key(paths: list[str], min_side: int, stamps: list[tuple[int, ...]]) -> dict[str, Any]:
    """What a clean scan is recorded against (image_scan.json in a run directory)."""
    return {"files": len(paths), "min_side": min_side, "digest": file_list_digest(paths, stamps)}


def scan_headers(
    paths: list[str],
    min_side: int,
    stamps: list[tuple[int, ...]],
    *,
    rank: int = 0,
    world: int = 1,
    workers: int = 0,
    progress: bool = True,
    cache: Path | None = None,
) -> tuple[str | None, dict[str, Any]]:
    """(the first problem among this process's share of `paths` or None, the scan's key). A clean scan recorded in
    `cache` for the same key is trusted without reading the files again."""
    key = scan_key(paths, min_side, stamps)
    if cache is not None and cache.is_file() and json.loads(cache.read_text()) == key:
        return None, key
    mine = paths[rank::world]
    loader = DataLoader(
        _Headers(mine, min_side), batch_size=64, num_workers=workers, collate_fn=list, worker_init_fn=quiet_worker
    )
    for problems in progress_bar(loader, desc="checking image headers", disable=not progress, unit="batch"):
        bad = next((p for p in problems if p), None)
        if bad:
            return bad, key
    return None, key
