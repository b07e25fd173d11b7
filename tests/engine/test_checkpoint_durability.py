"""Checkpoints carry a checksum, resume falls back past damaged files, run files survive a crash mid-write."""

import os
from pathlib import Path

import pytest
import torch

from kmim.engine.checkpoint import CKPT_FORMAT, latest_checkpoint, load_checkpoint, save_checkpoint
from kmim.errors import KmimError
from kmim.runinfo import append_jsonl, atomic_write, clean_orphan_tmp, read_jsonl


def _state(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(64, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 64)).sum().backward()
    opt.step()
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "config": {"name": "run", "lrs": [0.1, 0.01], "betas": (0.9, 0.95), "flag": True, "root": None},
        "train_state": {"epoch": seed, "step": 10 * seed},
        "rng": torch.get_rng_state(),
        "tokenizer": {"kind": "kmeans", "state": {"centroids": torch.randn(8, 4, dtype=torch.bfloat16)}},
    }


def _flip_middle_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_round_trip_returns_the_flat_dict(tmp_path):
    state = _state()
    save_checkpoint(tmp_path / "c.pt", state)
    ckpt = load_checkpoint(tmp_path / "c.pt")
    assert list(ckpt) == ["format", *state]  # no checksum key leaks out
    assert ckpt["format"] == CKPT_FORMAT
    assert _same({k: ckpt[k] for k in state}, state)
    assert list((tmp_path).iterdir()) == [tmp_path / "c.pt"]  # no temp file left behind
    raw = torch.load(tmp_path / "c.pt", weights_only=True)  # still a plain torch file (README's encoder.pt recipe)
    assert len(raw["sha256"]) == 64 and _same(raw["model"], state["model"])


def test_a_flipped_byte_is_refused(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, _state())
    _flip_middle_byte(path)
    with pytest.raises(KmimError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert msg.startswith(f"checkpoint {path} is damaged (checksum mismatch)") and "\n" not in msg


def test_a_hit_on_the_checksum_key_is_not_taken_for_a_legacy_file(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"train_state": {"epoch": 1}})
    data = path.read_bytes()
    assert data.count(b"sha256") == 1
    path.write_bytes(data.replace(b"sha256", b"sha257"))
    with pytest.raises(KmimError, match="is damaged"):
        load_checkpoint(path)


def test_legacy_checkpoint_without_checksum_loads(tmp_path):
    state = _state()
    torch.save({"format": CKPT_FORMAT, **state}, tmp_path / "old.pt")
    ckpt = load_checkpoint(tmp_path / "old.pt")
    assert ckpt["format"] == CKPT_FORMAT and _same({k: ckpt[k] for k in state}, state)


def _run(tmp_path, epochs, last=True):
    ckpts = tmp_path / "run" / "checkpoints"
    for e in epochs:
        save_checkpoint(ckpts / f"checkpoint-{e:04d}.pt", _state(e))
    if last:
        save_checkpoint(ckpts / "last.pt", _state(epochs[-1]))
    return tmp_path / "run"


def test_latest_checkpoint_prefers_an_intact_last(tmp_path):
    run = _run(tmp_path, [5, 10])
    ckpt, path, note = latest_checkpoint(run)
    assert path == run / "checkpoints" / "last.pt" and note is None and ckpt["train_state"]["epoch"] == 10


def test_latest_checkpoint_falls_back_to_the_newest_intact_numbered_one(tmp_path):
    run = _run(tmp_path, [5, 10, 12])  # 12 sorts after 10 by number, 100 would sort before 12 as text
    save_checkpoint(run / "checkpoints" / "checkpoint-0100.pt", _state(100))
    _flip_middle_byte(run / "checkpoints" / "last.pt")
    _flip_middle_byte(run / "checkpoints" / "checkpoint-0100.pt")
    ckpt, path, note = latest_checkpoint(run)
    assert path.name == "checkpoint-0012.pt" and ckpt["train_state"]["epoch"] == 12
    assert note == "checkpoints/last.pt is damaged (checkpoint-0100.pt damaged too): resuming from checkpoint-0012.pt"


def test_latest_checkpoint_when_last_is_missing(tmp_path):
    run = _run(tmp_path, [3], last=False)
    _, path, note = latest_checkpoint(run)
    assert path.name == "checkpoint-0003.pt"
    assert note == "checkpoints/last.pt is missing: resuming from checkpoint-0003.pt"


def test_latest_checkpoint_of_a_run_killed_before_its_first_checkpoint(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / ".last.pt.abc123.tmp").write_bytes(b"half")
    with pytest.raises(KmimError) as e:
        latest_checkpoint(run)
    msg = str(e.value)
    assert "killed before its first checkpoint" in msg and "without --resume" in msg and "\n" not in msg


def test_latest_checkpoint_when_all_are_damaged(tmp_path):
    run = _run(tmp_path, [1])
    _flip_middle_byte(run / "checkpoints" / "last.pt")
    _flip_middle_byte(run / "checkpoints" / "checkpoint-0001.pt")
    with pytest.raises(KmimError, match=r"checkpoints/last.pt is damaged and no intact checkpoint-NNNN.pt is left"):
        latest_checkpoint(run)


def test_clean_orphan_tmp(tmp_path):
    for name in ("last.pt", ".last.pt.abc123.tmp", ".metrics.jsonl.x_9.tmp", "notes.tmp", ".hidden"):
        (tmp_path / name).write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".a.pt.zz.tmp").write_text("x")
    removed = clean_orphan_tmp(tmp_path)
    assert removed == [tmp_path / ".last.pt.abc123.tmp", tmp_path / ".metrics.jsonl.x_9.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "last.pt", "notes.tmp", "sub"]
    assert (tmp_path / "sub" / ".a.pt.zz.tmp").exists()  # not recursive
    assert clean_orphan_tmp(tmp_path / "missing") == []


def test_clean_orphan_tmp_matches_what_atomic_write_leaves(tmp_path):
    def crash(tmp):
        (tmp_path / "seen").write_text(tmp)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "last.pt", crash)
    tmp = (tmp_path / "seen").read_text()
    (tmp_path / tmp.rsplit("/", 1)[1]).write_text("left over by a kill -9")  # what a hard kill would leave
    assert [p.name for p in clean_orphan_tmp(tmp_path)] == [tmp.rsplit("/", 1)[1]]


def test_read_jsonl_drops_a_torn_last_line(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"epoch": 1, "loss": 2.5})
    append_jsonl(path, {"epoch": 2, "loss": 2.0})
    intact = path.read_bytes()
    path.write_bytes(intact + b'{"epoch": 3, "lo')
    assert read_jsonl(path) == [{"epoch": 1, "loss": 2.5}, {"epoch": 2, "loss": 2.0}]
    err = capsys.readouterr().err
    assert f"{path}" in err and "torn last line 3" in err and err.count("\n") == 1
    assert path.read_bytes() == intact  # truncated to its intact lines
    append_jsonl(path, {"epoch": 3})
    assert read_jsonl(path)[-1] == {"epoch": 3}


def test_read_jsonl_ends_an_unterminated_intact_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": 2}')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert path.read_bytes() == b'{"a": 1}\n{"a": 2}\n'


def test_read_jsonl_refuses_a_bad_middle_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(KmimError, match=r"m.jsonl: line 2 is not valid JSON \(.*\): fix or delete that line"):
        read_jsonl(path)
    assert path.read_bytes() == b'{"a": 1}\n{"a": \n{"a": 3}\n'  # left as it was
    path.write_bytes(b'{"a": 1}\n[1, 2]\n')
    with pytest.raises(KmimError, match=r"m.jsonl: line 2 is not a JSON object"):
        read_jsonl(path)


def test_writes_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd))
    atomic_write(tmp_path / "a.txt", lambda tmp: Path(tmp).write_text("x"))
    assert len(synced) == 2 and synced[0].endswith(".tmp") and synced[1] == str(tmp_path)  # the file, then the folder
    append_jsonl(tmp_path / "m.jsonl", {"a": 1})
    assert synced[2] == str(tmp_path / "m.jsonl")


@pytest.mark.parametrize(
    "error",
    [
        OSError(28, "No space left on device"),  # ENOSPC
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),  # torch 2.14
        RuntimeError("basic_ios::clear: iostream error"),  # torch 2.14, another write path
    ],
)
def test_a_full_disk_is_named_in_one_line_and_the_old_file_kept(error, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from kmim.errors import KmimError
    from kmim.runinfo import atomic_write

    target = tmp_path / "last.pt"
    target.write_bytes(b"good")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(2**30, 2**30 - 4096, 4096))  # a full device

    def full(tmp):
        raise error

    with pytest.raises(
        KmimError,
        match=r"no space left on the device writing .*last.pt \(\d+ MiB free\): last.pt "
        r"keeps its previous content",
    ):
        atomic_write(target, full)
    assert target.read_bytes() == b"good" and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_torch_write_error_with_space_left_is_not_called_a_full_disk(tmp_path):
    from kmim.runinfo import atomic_write

    def broken(tmp):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    with pytest.raises(RuntimeError, match="unexpected pos"):  # this machine's disk has space: torch's own error
        atomic_write(tmp_path / "last.pt", broken)
