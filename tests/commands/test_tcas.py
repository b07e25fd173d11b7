"""`kmim tcas` and `kmim show-tokens` on the tiny synthetic dataset (through their add_arguments / run pair)."""

import argparse
import csv

import pytest

from kmim.commands import show_tokens, tcas
from kmim.config import load_config
from kmim.data import build_dataset
from kmim.errors import KmimError
from kmim.fit import TOKENIZERS, FitData, fit_tokenizer

DATA = [
    "data.img_size=16",
    "data.synthetic_per_class=8",
    "data.synthetic_classes=3",
    "model.patch_size=4",
    "tokenizer.niter=5",
]
PNG = b"\x89PNG"


def _run(module, argv):
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    return module.run(p.parse_args(argv))


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_parse_spec():
    assert tcas.parse_spec("kmeans-pixels") == ("kmeans-pixels", [])
    assert tcas.parse_spec("kmeans-pixels:k=300,patch_norm=true") == (
        "kmeans-pixels",
        ["tokenizer.k=300", "tokenizer.patch_norm=true"],
    )
    with pytest.raises(KmimError, match="not key=value"):
        tcas.parse_spec("kmeans-pixels:300")
    with pytest.raises(KmimError, match="has no name"):
        tcas.parse_spec(":k=3")


def test_tcas_scores_specs_and_files(tmp_path, capsys):
    saved = tmp_path / "cw.pt"
    cfg = load_config(None, ["data.name=synthetic", *DATA, "tokenizer.name=class-wise", "tokenizer.k=6"])
    ds, info = build_dataset(cfg.data, "train")
    fit_tokenizer(cfg.tokenizer, FitData(ds, info, 4, "synthetic"), progress=False).save(saved)

    out = tmp_path / "out"
    argv = [
        "--data",
        "synthetic",
        "--no-grid",
        "--out",
        str(out),
        "-q",
        *DATA,
        "--tokenizer",
        "kmeans-pixels:k=4",
        "--tokenizer",
        "cross-class:k=4",
        "--file",
        str(saved),
    ]
    assert _run(tcas, argv) == 0
    rows = _rows(out / "tcas.csv")
    assert list(rows[0])[:7] == ["tokenizer", "k", "tcas", "nmi", "purity", "usage", "perplexity"]
    assert [r["tokenizer"] for r in rows] == ["kmeans-pixels:k=4", "cross-class:k=4", str(saved)]
    assert float(rows[2]["tcas"]) == 0.0 and float(rows[2]["purity"]) == 1.0 and rows[2]["k"] == "6"
    assert float(rows[1]["tcas"]) > float(rows[0]["tcas"])
    assert all(int(r["patches"]) == 24 * 16 for r in rows)  # 3 classes x 8 images x 16 patches, train split
    assert (out / "tcas.png").read_bytes()[:4] == PNG
    printed = capsys.readouterr().out
    assert "| kmeans-pixels:k=4 | 4 |" in printed and "Spearman" in printed


def test_tcas_default_grid_reports_skipped_names(tmp_path, capsys, monkeypatch):
    monkeypatch.delitem(TOKENIZERS, "random")
    out = tmp_path / "grid"
    argv = [
        "--data",
        "synthetic",
        "--grid-k",
        "3,6",
        "--out",
        str(out),
        "-q",
        "--split",
        "test",
        "--max-images",
        "9",
        *DATA,
    ]
    assert _run(tcas, argv) == 0
    names = [r["tokenizer"] for r in _rows(out / "tcas.csv")]
    expect = [
        "kmeans-pixels:k=3",
        "kmeans-pixels:k=6",
        "kmeans-pixels:k=6,patch_norm=true",
        "kmeans-hog:k=6",
        "class-wise:k=6",
        "cross-class:k=6",
    ]
    assert names == [n for n in expect if n.split(":")[0] in TOKENIZERS]
    printed = capsys.readouterr().out
    assert "skipped grid entry random:k=6" in printed and "skipped (not registered): random:k=6" in printed
    assert all(int(r["patches"]) == 9 * 16 for r in _rows(out / "tcas.csv"))


def test_tcas_bad_inputs(tmp_path):
    base = ["--data", "synthetic", "--out", str(tmp_path), "-q", *DATA]
    with pytest.raises(KmimError, match="must be one of"):
        _run(tcas, [*base, "--no-grid", "--tokenizer", "kmeans-nope:k=3"])
    with pytest.raises(KmimError, match="tokenizer.kk"):
        _run(tcas, [*base, "--no-grid", "--tokenizer", "kmeans-pixels:kk=3"])
    with pytest.raises(KmimError, match="nothing to score"):
        _run(tcas, [*base, "--no-grid"])
    with pytest.raises(KmimError, match="does not exist"):
        _run(tcas, [*base, "--no-grid", "--file", str(tmp_path / "missing.pt")])


def test_show_tokens_writes_png(tmp_path, capsys):
    out = tmp_path / "tokens.png"
    argv = [
        "--data",
        "synthetic",
        "--tokenizer",
        "kmeans-pixels:k=4",
        "-n",
        "5",
        "--cols",
        "3",
        "--ids",
        "--out",
        str(out),
        "-q",
        *DATA,
    ]
    assert _run(show_tokens, argv) == 0
    assert out.read_bytes()[:4] == PNG
    assert "5 images" in capsys.readouterr().out
    with pytest.raises(KmimError, match="exactly one"):
        _run(show_tokens, ["--data", "synthetic", "--out", str(out), *DATA])


def test_pick_images_spreads_classes():
    ds = [(None, y) for y in [0] * 10 + [1] * 10 + [2] * 10]
    idx = show_tokens.pick_images(ds, 6, 3, seed=0)
    assert len(idx) == 6 and sorted(ds[i][1] for i in idx) == [0, 0, 1, 1, 2, 2]


def test_cli_wiring(tmp_path, capsys):
    from kmim.cli import main

    out = tmp_path / "cli"
    argv = ["tcas", "--data", "synthetic", "--no-grid", "--tokenizer", "random:k=5", "--out", str(out), "-q", *DATA]
    assert main(argv) == 0 and (out / "tcas.csv").is_file()
    before = (out / "tcas.csv").read_bytes()
    assert main(argv) == 2 and "tcas.csv already exists: pass --overwrite" in capsys.readouterr().err
    assert (out / "tcas.csv").read_bytes() == before
    assert main([*argv, "--overwrite"]) == 0
    assert main(["tcas", "--data", "synthetic", "--no-grid", "--out", str(tmp_path / "new"), *DATA]) == 2
    assert "nothing to score" in capsys.readouterr().err
