"""ImageFolder listings walked once: an ImageFolder split's (classes, samples) is kept per process and reused while
its folders are unchanged, so building the same split again (the door's scan, pretraining, evaluation) does not walk
it again; under a process group rank 0 walks and the others receive its listing (`kmim.resolve.check_images`), so
32 ranks on a parallel filesystem walk 1.28 M files once per launch, not 32 times.

A listing is valid while its stamp holds: the modification times of the split folder and of each class folder (a
file added, removed or renamed in a class folder changes that folder's time), C + 1 `stat`s instead of one per image.
On a filesystem with coarse times (1 s), a file added within the second of the walk is seen at the next launch.
"""

from __future__ import annotations

import os
from typing import Any

import torchvision.datasets as tvd
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

Listing = tuple[tuple[str, ...], tuple[tuple[str, int], ...]]  # (classes, samples (path, class index))
Stamped = tuple[tuple[int, ...], Listing]

_MEMO: dict[str, Stamped] = {}


def stamp(folder: str, classes: tuple[str, ...]) -> tuple[int, ...]:
    """Modification times (ns) of the split folder and of each of its class folders."""
    return (os.stat(folder).st_mtime_ns, *(os.stat(os.path.join(folder, c)).st_mtime_ns for c in classes))


def walk(folder: str) -> Listing:
    """torchvision's ImageFolder walk: sorted class folders, then every image file under each (sorted)."""
    classes, class_to_idx = find_classes(folder)
    samples = make_dataset(folder, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=False)
    return tuple(classes), tuple(samples)


def listing(folder: str) -> Listing:
    """The split's listing: the kept one while its stamp holds, else a fresh walk (then kept)."""
    hit = _MEMO.get(folder)
    if hit is not None and _still(folder, hit):
        return hit[1]
    found = walk(folder)
    _MEMO[folder] = (stamp(folder, found[0]), found)
    return found


def _still(folder: str, kept: Stamped) -> bool:
    try:
        return stamp(folder, kept[1][0]) == kept[0]
    except OSError:  # a class folder was removed
        return False


def kept(folders: list[str]) -> dict[str, Stamped]:
    """The kept listings of `folders` (to send to the other processes)."""
    return {f: _MEMO[f] for f in folders if f in _MEMO}


def keep(listings: dict[str, Stamped]) -> None:
    """Listings walked by another process; each is used here only while its stamp holds on this machine."""
    _MEMO.update(listings)


class ListedImageFolder(tvd.ImageFolder):  # type: ignore[misc]  # torchvision is untyped
    """torchvision's ImageFolder whose walk is `listing` (the same classes and samples, walked once)."""

    def find_classes(self, directory: str | os.PathLike[str]) -> tuple[list[str], dict[str, int]]:
        classes = listing(str(directory))[0]
        return list(classes), {c: i for i, c in enumerate(classes)}

    @staticmethod
    def make_dataset(
        directory: str | os.PathLike[str], class_to_idx: dict[str, int], *args: Any, **kwargs: Any
    ) -> list[tuple[str, int]]:
        return list(listing(str(directory))[1])
