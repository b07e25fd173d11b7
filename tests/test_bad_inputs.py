"""The audit of bad inputs, one case per row: each gives exit 2, one line naming the cause, and changes no file.

Out-of-range config values are covered field by field in tests/test_config.py; image modes that kmim now reads
correctly (16-bit, CMYK, palette, 1-bit, RGBA) by pixel value in tests/data/test_image_modes.py.
"""

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kmim.cli import main
from tests.conftest import TINY


def _tree(folder: Path) -> dict[str, str]:
    """Every file under folder with the sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _refused(argv: list[str], where: Path, message: str, capsys) -> str:
    before = _tree(where)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert _tree(where) == before
    return err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished tiny run (tokenizer file, run dir with checkpoints 1 and 2) to damage copies of."""
    root = tmp_path_factory.mktemp("finished")
    tok = root / "tok.pt"
    assert main(["tokenize", "-q", *TINY, "--out", str(tok)]) == 0
    assert (
        main(["pretrain", "-q", *TINY, f"out_dir={root}", "name=run", f"tokenizer.path={tok}", "train.save_every=1"])
        == 0
    )
    return root


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())
    return dst


def _flip_a_byte(path: Path) -> None:
    """Flip one bit inside the largest tensor's stored bytes (a flip in zip padding would change no content)."""
    blob = torch.load(path, weights_only=True)
    state = blob.get("state") or blob.get("model")
    biggest = max(state.values(), key=lambda t: t.numel())
    data = bytearray(path.read_bytes())
    at = data.find(biggest.contiguous().numpy().tobytes()[:64])
    assert at > 0
    data[at + 9] ^= 0x01
    path.write_bytes(bytes(data))


# ---- images -------------------------------------------------------------------------------------------------------


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _imagefolder(root: Path, bad_name: str, bad_bytes: bytes) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                img = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
                (root / split / c / f"{i}.png").write_bytes(_png_bytes(img))
    (root / "train" / "a" / bad_name).write_bytes(bad_bytes)
    return root


GOOD_PNG = _png_bytes(np.full((20, 20, 3), 128, np.uint8))
GOOD_JPEG = _jpeg_bytes(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))  # cut past its header
BAD_IMAGES = {
    "corrupt": ("x.png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, "unreadable or corrupt image"),
    "truncated": ("x.png", GOOD_PNG[: len(GOOD_PNG) // 2], "the PNG file is cut short (no end marker)"),
    "truncated-jpeg": ("x.jpg", GOOD_JPEG[: len(GOOD_JPEG) // 2], "the JPEG file is cut short (no end marker)"),
    "zero-byte": ("x.jpg", b"", "unreadable or corrupt image"),
    "tiny": ("x.png", _png_bytes(np.zeros((3, 3, 3), np.uint8)), "smaller than one patch (4)"),
}


@pytest.mark.parametrize("target", ["tokens", "pixels"])  # pixels fit no tokenizer: the header scan is the door
@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_image(case, target, tmp_path, capsys):
    name, data, message = BAD_IMAGES[case]
    root = _imagefolder(tmp_path / "data", name, data)
    out = tmp_path / "runs"
    out.mkdir()
    argv = [
        "pretrain",
        "-q",
        *TINY,
        "data.name=imagefolder",
        f"data.root={root}",
        "data.img_size=16",
        f"out_dir={out}",
        "train.epochs=1",
        "train.warmup_epochs=0",
        f"train.target={target}",
    ]
    err = _refused(argv, tmp_path, message, capsys)
    assert name in err  # names the file


# ---- damaged, foreign and bit-flipped files ----------------------------------------------------------------------

DAMAGED = {
    "junk": (lambda p: p.write_bytes(b"not a torch file"), "cannot be read"),
    "foreign": (lambda p: torch.save({"hello": 1}, p), "is not a kmim"),
    "bit-flipped": (_flip_a_byte, "is damaged (checksum mismatch)"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_checkpoint(case, finished_run, tmp_path, capsys):
    damage, message = DAMAGED[case]
    ckpt = _copy(finished_run / "run/checkpoints/checkpoint-0002.pt", tmp_path / "c.pt")
    damage(ckpt)
    _refused(["knn", "-q", str(ckpt)], tmp_path, message, capsys)


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_tokenizer(case, finished_run, tmp_path, capsys):
    damage, message = DAMAGED[case]
    tok = _copy(finished_run / "tok.pt", tmp_path / "tok.pt")
    damage(tok)
    argv = ["pretrain", "-q", *TINY, f"out_dir={tmp_path / 'runs'}", f"tokenizer.path={tok}"]
    _refused(argv, tmp_path, message, capsys)


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_centroids(value, finished_run, tmp_path, capsys):
    blob = torch.load(finished_run / "tok.pt", weights_only=True)
    blob.pop("sha256")
    blob["state"]["centroids"][0, 0] = float(value)
    torch.save(blob, tmp_path / "tok.pt")
    argv = ["pretrain", "-q", *TINY, f"out_dir={tmp_path / 'runs'}", f"tokenizer.path={tmp_path / 'tok.pt'}"]
    _refused(argv, tmp_path, "has 1 NaN/Inf values", capsys)


def test_encoder_weights_that_match_nothing(tmp_path, capsys):
    import timm

    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2
    )
    torch.save({f"backbone.{k}": v for k, v in model.state_dict().items()}, tmp_path / "w.pth")
    kw = "{patch_size: 8, embed_dim: 16, depth: 1, num_heads: 2}"
    argv = [
        "tokenize",
        "-q",
        *TINY,
        "tokenizer.name=kmeans-features",
        "tokenizer.encoder=vit_tiny_patch16_224",
        f"tokenizer.encoder_weights={tmp_path / 'w.pth'}",
        f"tokenizer.encoder_kwargs={kw}",
        "--out",
        str(tmp_path / "t.pt"),
    ]
    _refused(argv, tmp_path, "matches only 0 of the", capsys)


# ---- outputs ------------------------------------------------------------------------------------------------------


def _outputs_under_a_file(tmp_path: Path) -> dict[str, list[str]]:
    f = tmp_path / "a_file"
    f.write_text("x")
    return {
        "tokenize": ["tokenize", "-q", *TINY, "--out", str(f / "tok.pt")],
        "pretrain": ["pretrain", "-q", *TINY, f"out_dir={f}"],
        "tcas": [
            "tcas",
            "-q",
            "--data",
            "synthetic",
            "--no-grid",
            "--tokenizer",
            "random:k=5",
            "--out",
            str(f),
            *TINY,
        ],
        "demo": ["demo", "-q", "--fast", "--out", str(f / "demo"), *TINY],
        "show-tokens": [
            "show-tokens",
            "-q",
            "--data",
            "synthetic",
            "--tokenizer",
            "random:k=5",
            "--out",
            str(f / "x.png"),
            *TINY,
        ],
        "theory": ["theory", "-q", "--out", str(f / "theory")],
    }


@pytest.mark.parametrize("command", ["tokenize", "pretrain", "tcas", "demo", "show-tokens", "theory"])
def test_output_under_a_regular_file(command, tmp_path, capsys):
    _refused(_outputs_under_a_file(tmp_path)[command], tmp_path, "is a file, not a folder", capsys)


def test_existing_outputs_are_not_replaced(finished_run, tmp_path, capsys):
    tok = _copy(finished_run / "tok.pt", tmp_path / "tok.pt")
    _refused(["tokenize", "-q", *TINY, "--out", str(tok)], tmp_path, "already exists: pass --overwrite", capsys)
    png = tmp_path / "x.png"
    png.write_bytes(GOOD_PNG)
    argv = ["show-tokens", "-q", "--data", "synthetic", "--tokenizer", "random:k=5", "--out", str(png), *TINY]
    _refused(argv, tmp_path, "already exists: pass --overwrite", capsys)


def test_finished_run_without_checkpoints_is_not_overwritten(finished_run, tmp_path, capsys):
    run = tmp_path / "runs" / "run"
    for f in ("config.yaml", "results.json", "encoder.pt", "tokenizer.pt", "metrics.jsonl"):
        _copy(finished_run / "run" / f, run / f)
    argv = ["pretrain", "-q", *TINY, f"out_dir={tmp_path / 'runs'}", "name=run"]
    _refused(argv, tmp_path, "holds results (results.json, encoder.pt) but no checkpoint", capsys)


def test_started_run_with_another_config_is_not_overwritten(finished_run, tmp_path, capsys):
    run = tmp_path / "runs" / "run"
    for f in ("config.yaml", "tokenizer.pt"):
        _copy(finished_run / "run" / f, run / f)
    argv = ["pretrain", "-q", *TINY, f"out_dir={tmp_path / 'runs'}", "name=run", "train.epochs=3"]
    _refused(argv, tmp_path, "was started with another config", capsys)


# ---- resume -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.depth=3"], "--resume cannot change model"),
        (["data.img_size=32"], "--resume cannot change data.img_size"),
        (["train.target=pixels"], "--resume cannot change train.target"),
        (["train.epochs=1"], "train.epochs=1 is below the 2 epochs the checkpoint already trained"),
    ],
)
def test_resume_mismatch(overrides, message, finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    for p in (finished_run / "run").rglob("*"):
        if p.is_file():
            _copy(p, run / p.relative_to(finished_run / "run"))
    _refused(["pretrain", "-q", "--resume", str(run), *overrides], tmp_path, message, capsys)


def test_resume_before_the_first_checkpoint_says_what_to_do(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: run\n")
    _refused(["pretrain", "--resume", str(run)], tmp_path, "rerun the same `kmim pretrain` command without", capsys)


def test_resume_with_a_config_file(finished_run, tmp_path, capsys):
    argv = ["pretrain", "--resume", str(finished_run / "run"), "-c", "configs/mnist5k_kmim.yaml"]
    _refused(argv, finished_run, "cannot be combined with --resume", capsys)


def test_a_per_kind_tokenizer_option_the_tokenizer_does_not_read_is_refused(tmp_path, capsys):
    """`kmim pretrain tokenizer.vq.epochs=3` with the default kmeans-pixels would silently ignore the option."""
    from kmim.cli import main

    code = main(["pretrain", "-q", "tokenizer.vq.epochs=3", f"out_dir={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    want = (
        "kmim pretrain: error: tokenizer.vq.epochs=3 is set, but tokenizer.name=kmeans-pixels does not read "
        "tokenizer.vq.*: remove it or choose the tokenizer that reads it"
    )
    assert code == 2 and err == [want]
    assert list(tmp_path.iterdir()) == []
    assert main(["tokenize", "-q", "tokenizer.name=vq", "tokenizer.vq.epochs=0", "--out", str(tmp_path / "t.pt")]) == 2


def test_pretraining_inputs_a_run_would_ignore_or_fail_on_late_are_refused_at_the_door(tmp_path, capsys):
    """An online run given tokenizer.path (it learns its own prototypes), and run.wandb=true without wandb (it
    failed after the tokenizer fit and left files that blocked a rerun): one line, nothing written."""
    import importlib.util

    base = ["pretrain", "-q", *TINY, f"out_dir={tmp_path / 'runs'}"]
    (tmp_path / "tok.pt").write_bytes(b"x")
    _refused(
        [*base, "train.target=online-clusters", f"tokenizer.path={tmp_path / 'tok.pt'}"],
        tmp_path,
        "is not read by train.target=online-clusters",
        capsys,
    )
    _refused([*base, "model.head=cosine"], tmp_path, "model.head=cosine predicts cosines", capsys)
    online = [*base, "train.target=online-clusters"]  # 24 images x 16 patches
    _refused([*online, "tokenizer.k=385"], tmp_path, "tokenizer.k=385 exceeds the 384 training patches", capsys)
    if importlib.util.find_spec("wandb") is None:
        _refused([*base, "run.wandb=true"], tmp_path, "run.wandb=true but wandb is not installed", capsys)


def test_export_of_an_unfinished_run_or_into_a_missing_folder_is_refused(finished_run, tmp_path, capsys):
    """An export of epoch 1 of 2 (its card would claim 2 epochs) needs --allow-unfinished, and then says 1; an --out
    whose folder does not exist is one line (it was a traceback)."""
    ckpt1 = str(finished_run / "run/checkpoints/checkpoint-0001.pt")
    _refused(["export", ckpt1, "--out", str(tmp_path / "e")], tmp_path, "is an unfinished run (epoch 1 of 2)", capsys)
    _refused(
        ["export", str(finished_run / "run"), "--out", str(tmp_path / "a/b/e")], tmp_path, "does not exist", capsys
    )
    assert main(["export", ckpt1, "--out", str(tmp_path / "e"), "--allow-unfinished", "-q"]) == 0
    assert "(1 epochs," in (tmp_path / "e" / "README.md").read_text()


def test_continuing_a_run_on_read_only_media_or_with_a_file_in_its_way_is_one_line(
    finished_run, tmp_path, capsys, monkeypatch
):
    """Continuing (2 more epochs) a run whose folder cannot be written was a traceback at its first write."""
    import os
    import shutil

    run = Path(shutil.copytree(finished_run / "run", tmp_path / "run"))
    argv = ["pretrain", "--resume", str(run), "-q", "train.epochs=4"]
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(run / "checkpoints") else real(p, mode))
    _refused(argv, tmp_path, f"{run / 'checkpoints'} is not writable (a read-only copy or mount?)", capsys)
    monkeypatch.undo()
    (run / "tensorboard").mkdir(exist_ok=True)
    os.rename(run / "tensorboard", tmp_path / "tb")
    (run / "tensorboard").write_text("")
    _refused(argv, tmp_path, f"{run / 'tensorboard'} is a file, not a folder", capsys)
