"""Named class lists a preset can require of data.root (`data.class_list`) and `kmim prepare --classes` can cut.

* `in100`: ImageNet-100 as the paper uses it, the subset of CMC (Tian, Krishnan, Isola 2020): the 100 wnids of
  `imagenet100.txt` in github.com/HobbitLong/CMC, shipped as kmim/data/in100.txt in that file's order.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from kmim.errors import KmimError

CLASS_LISTS = {"in100": "in100.txt"}
_warned: set[str] = set()


def class_list(name: str) -> list[str]:
    """The wnids of the named list, in its file's order."""
    if name not in CLASS_LISTS:
        raise KmimError(f"class list {name!r} is unknown: valid lists are {', '.join(CLASS_LISTS)}")
    text = resources.files("kmim.data").joinpath(CLASS_LISTS[name]).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def warn_if_other_classes(folder: Path, classes: list[str], name: str) -> None:
    """One line on stderr (once per folder and process) when `folder`'s class folders are not the list `name`:
    numbers on other classes do not compare with the preset's published ones."""
    key = str(folder)
    wanted = set(class_list(name))
    if key in _warned or set(classes) == wanted:
        return
    _warned.add(key)
    missing, extra = len(wanted - set(classes)), len(set(classes) - wanted)
    print(
        f"kmim: warning: {folder} holds {len(classes)} classes, not the {name} list ({missing} of its "
        f"{len(wanted)} missing, {extra} others): numbers will not compare with the preset's published ones; "
        f"build the subset with `kmim prepare SRC --out DST --classes {name}`",
        file=sys.stderr,
    )
