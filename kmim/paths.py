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


def check_run_writable(run_dir: str | Path) -> Path:
    """A run that will be continued can be written: the run folder and those it writes into (checkpoints/,
    tensorboard/, probes/) are writable folders where they exist (a read-only mount or copy is named, before any
    work, instead of failing on its first write)."""
    run_dir = Path(run_dir)
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "tensorboard", run_dir / "probes"):
        if folder.exists() and not folder.is_dir():
            raise KmimError(f"cannot continue {run_dir}: {folder} is a file, not a folder; move it away")
        if folder.exists() and not os.access(folder, os.W_OK | os.X_OK):
            raise KmimError(
                f"cannot continue {run_dir}: {folder} is not writable (a read-only copy or mount?): make it "
                "writable, or copy the run folder somewhere writable and continue that"
            )
    return run_dir


def check_writable(path: str | Path, overwrite: bool = False, flag: str = "--overwrite") -> Path:
    """An output file that may be written: its folder is writable, and it does not exist unless `overwrite`."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise KmimError(f"{path} is a folder: give a file path for the output")
    if path.exists() and not overwrite:
        raise KmimError(f"{path} already exists: pass {flag} to replace it, or choose another path")
    check_folder_writable(path.parent)
    return path
