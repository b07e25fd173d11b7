"""Output paths checked before any work: never write into a file's place, never replace a result silently."""

from __future__ import annotations

import os
from pathlib import Path

from kmim.errors import KmimError


def check_folder_writable(folder: str | Path) -> Path:
    """The folder (created later if missing) can be written: its first existing ancestor is a writable folder."""
    folder = Path(folder).expanduser()
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise KmimError(f"cannot write under {folder}: {probe} is a file, not a folder; choose another output path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise KmimError(f"cannot write under {folder}: {probe} is not writable; choose another output path")
    return folder


def check_writable(path: str | Path, overwrite: bool = False, flag: str = "--overwrite") -> Path:
    """An output file that may be written: its folder is writable, and it does not exist unless `overwrite`."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise KmimError(f"{path} is a folder: give a file path for the output")
    if path.exists() and not overwrite:
        raise KmimError(f"{path} already exists: pass {flag} to replace it, or choose another path")
    check_folder_writable(path.parent)
    return path
