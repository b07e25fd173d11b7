"""End-to-end smoke tests of every command on tiny synthetic data."""

import json
import subprocess
import sys

import pytest

from kmim.cli import main
from tests.conftest import TINY


def test_tokenize_pretrain_resume_knn_probe(tmp_path, capsys):
    runs = str(tmp_path / "runs")
    tok = tmp_path / "tok.pt"
    assert main(["tokenize", "-q", *TINY, "--out", str(tok)]) == 0
    assert tok.is_file() and "saved kmeans-pixels tokenizer (K=8" in capsys.readouterr().out

    assert main(["pretrain", "-q", *TINY, f"out_dir={runs}", "name=r", f"tokenizer.path={tok}", "train.epochs=1"]) == 0
    out = capsys.readouterr().out
    assert '"steps": 3' in out

    assert main(["pretrain", "-q", "--resume", f"{runs}/r", "train.epochs=2"]) == 0
    assert '"steps": 6' in capsys.readouterr().out

    assert main(["knn", "-q", f"{runs}/r", "eval.pool=mean"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["pool"] == "mean" and 0 <= res["knn_top1"] <= 100 and "linear_probe_top1" not in res

    assert main(["probe", "-q", f"{runs}/r/checkpoints/last.pt"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert 0 <= res["linear_probe_top1"] <= 100 and "knn_top1" not in res


def test_demo_writes_report_and_results(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "-q", "--fast", "--out", str(out), *TINY]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["methods"]) == {"kmim", "mae", "random_init"}
    for m in res["methods"].values():
        assert 0 <= m["knn_top1"] <= 100 and 0 <= m["linear_probe_top1"] <= 100 and m["wall_s"] >= 0
    report = (out / "report.md").read_text()
    assert "| K-MIM PIXEL (K=8) |" in report and "How noisy" in report
    # a second run in the same folder reuses the finished runs instead of training again
    assert main(["demo", "-q", "--fast", "--out", str(out), *TINY]) == 0
    assert json.loads((out / "results.json").read_text())["methods"]["kmim"]["knn_top1"] == m_knn(res)
    # a different config in the same folder is refused rather than overwritten
    assert main(["demo", "-q", "--fast", "--out", str(out), *TINY, "train.epochs=3"]) == 2
    assert "already holds a run" in capsys.readouterr().err


def m_knn(res):
    return res["methods"]["kmim"]["knn_top1"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["pretrain", "train.epoch=3"], "bad config key or value at 'train.epoch'"),
        (["knn", "/nonexistent/run"], "checkpoint /nonexistent/run does not exist"),
        (["pretrain", "-c", "/nonexistent.yaml"], "config file /nonexistent.yaml does not exist"),
        (["pretrain", "tokenizer.path=/nope.pt", "data.name=synthetic"], "tokenizer.path=/nope.pt does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    extra = [f"out_dir={tmp_path}"] if argv[0] == "pretrain" else []
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing written


def test_entry_point_exit_code():
    proc = subprocess.run([sys.executable, "-m", "kmim.cli", "knn", "/nonexistent/run"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("kmim knn: error: checkpoint /nonexistent/run")


def test_pretrain_and_probe_on_an_imagefolder(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(2):
            (tmp_path / "data" / split / f"c{c}").mkdir(parents=True)
            for i in range(6):
                arr = rng.integers(0, 60, (20, 24, 3), dtype=np.uint8) + np.uint8(150 * c)
                Image.fromarray(arr).save(tmp_path / "data" / split / f"c{c}" / f"{i}.png")
    common = [f"data.root={tmp_path / 'data'}", "data.name=imagefolder", "data.aug=rrc", "data.hflip=true"]
    common += [o for o in TINY if not o.startswith(("data.name", "data.synthetic"))]
    assert main(["pretrain", "-q", *common, f"out_dir={tmp_path / 'runs'}", "name=f", "train.batch_size=4"]) == 0
    assert '"steps": 6' in capsys.readouterr().out  # 12 images / batch 4 = 3 steps per epoch, 2 epochs
    assert main(["probe", "-q", str(tmp_path / "runs" / "f")]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_train"] == 12 and res["n_test"] == 12
    assert res["linear_probe_top1"] == 100.0  # the two classes differ in brightness


def test_random_init_floor_and_its_argument_rules(tmp_path, capsys):
    assert main(["knn", "-q", "--random-init", *TINY]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["checkpoint"] == "random-init (seed 0)" and 0 <= res["knn_top1"] <= 100
    assert main(["knn", "-q", *TINY]) == 2  # neither a path nor --random-init
    assert "give either an encoder PATH or --random-init" in capsys.readouterr().err


def test_resume_refuses_a_config_file(tmp_path, capsys):
    assert main(["pretrain", "--resume", str(tmp_path), "-c", "configs/mnist5k_kmim.yaml"]) == 2
    assert "cannot be combined with --resume" in capsys.readouterr().err


def test_python_dash_m_kmim():
    out = subprocess.run([sys.executable, "-m", "kmim", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "pretrain" in out.stdout and "tokenize" in out.stdout


def test_a_usage_error_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "kmim", "pretrain", "--bogus"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["kmim: error: unrecognized arguments: --bogus (see kmim --help)"]
