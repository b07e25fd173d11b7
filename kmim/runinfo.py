"""Run provenance and safe file writes: environment capture, atomic writes, JSON lines."""

from __future__ import annotations

import errno
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import kmim
from kmim.errors import KmimError


def git_sha() -> str | None:
    """The git commit of the kmim source tree, with '-dirty' when what sets the numbers (the package, the presets,
    the dependencies) has uncommitted changes, untracked files included; new results or docs beside it do not
    count. None outside git."""
    src = Path(kmim.__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        code = ["kmim", "configs", "pyproject.toml"]
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", *code], cwd=src, capture_output=True, text=True, timeout=5
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    import faiss
    import numpy
    import timm
    import torch

    return {
        "kmim": kmim.__version__,
        "git_sha": git_sha(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "faiss": faiss.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv,
    }


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
    """Call write(tmp_path) on a temp file beside `path`, then rename it over `path` (never half-written).

    Durable: the temp file is fsynced before the rename and the folder after it, so after a crash or power loss
    `path` holds either its old or its new content in full. A crash can leave the temp file `.<name>.XXXX.tmp`
    behind; `clean_orphan_tmp` removes those.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        _fsync_file(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        full = _disk_full(e, path.parent)  # measured while the temp file still holds its space
        Path(tmp).unlink(missing_ok=True)
        if full:
            free = shutil.disk_usage(path.parent).free / 2**20
            kept = "keeps its previous content" if path.exists() else "was not written"
            raise KmimError(
                f"no space left on the device writing {path} ({free:.0f} MiB free): {path.name} {kept}; "
                "free some space and run the command again (--resume for a run)"
            ) from None
        raise
    _fsync_dir(path.parent)


TORCH_WRITE_ERRORS = ("write failed", "unexpected pos", "iostream error")  # torch.save's RuntimeErrors for a failed
# write (they hide the errno): "write failed" (torch <= 2.x), "unexpected pos N vs M" and "basic_ios::clear:
# iostream error" (torch 2.14's inline_container, measured on a full 512 KiB tmpfs)
FULL_BELOW = 16 * 2**20  # bytes free under which a failed torch write is taken for a full device


def _disk_full(e: BaseException, folder: Path) -> bool:
    """An ENOSPC / EDQUOT OSError, or one of torch.save's failed-write RuntimeErrors on a device that has (almost)
    no space left."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    if not (isinstance(e, RuntimeError) and any(s in str(e) for s in TORCH_WRITE_ERRORS)):
        return False
    return shutil.disk_usage(folder).free < FULL_BELOW


def _fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)  # Windows fsyncs only writable handles
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable. A no-op where folders cannot be fsynced (Windows, some network mounts)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


_ORPHAN_TMP = re.compile(r"\..+\.[A-Za-z0-9_]+\.tmp")


def clean_orphan_tmp(folder: str | Path) -> list[Path]:
    """Delete the temp files `.<name>.XXXX.tmp` that an interrupted atomic_write left in `folder` (not in subfolders).

    Returns the removed paths, sorted. Call it only while nothing writes into `folder` (e.g. before a resume), since a
    write in progress has the same kind of temp file. A missing folder has nothing to clean.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in sorted(folder.iterdir()):
        if _ORPHAN_TMP.fullmatch(p.name) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: str | Path, row: dict[str, Any], *, durable: bool = True) -> None:
    """Append `row` as one JSON line; `durable` fsyncs the file (this row and every earlier one survive a crash)."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        if durable:
            os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file (blank lines are ignored).

    A crash mid-append leaves a torn last line: it is dropped with a one-line warning on stderr and the file is
    rewritten (atomically) to its intact lines, so the next append starts on a fresh line. An unparsable line
    anywhere else, or a line that is not a JSON object, is real damage: KmimError naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise KmimError(f"{path} does not exist")
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    rows: list[dict[str, Any]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            if any(rest.strip() for rest in lines[n:]):
                raise KmimError(f"{path}: line {n} is not valid JSON ({_reason(e)}): fix or delete that line") from None
            print(f"warning: {path}: dropped its torn last line {n} (a crash mid-append)", file=sys.stderr)
            _keep_prefix(path, b"".join(lines[: n - 1]))
            break
        if not isinstance(row, dict):
            raise KmimError(f"{path}: line {n} is not a JSON object: fix or delete that line")
        rows.append(row)
    else:
        if data and not data.endswith(b"\n"):  # intact but unterminated: end it so the next append is its own line
            _keep_prefix(path, data + b"\n")
    return rows


def _reason(e: ValueError) -> str:
    return e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"


def _keep_prefix(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
