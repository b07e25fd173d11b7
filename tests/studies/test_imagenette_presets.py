"""The Imagenette presets and the demo on photos (issue 27), on a few dozen real photos (skipped when
../shared/data/imagenette224.tar is absent)."""

import json

import pytest
import yaml

from kmim.cli import main
from kmim.config import config_to_dict, load_config
from kmim.studies.demo import IMAGENETTE, demo_overrides

PRESETS = [
    "configs/imagenette64_kmim.yaml",
    "configs/imagenette64_mae.yaml",
    "configs/imagenette128_vits16_kmim.yaml",
    "configs/imagenette128_vits16_mae.yaml",
]
TINY_BUDGET = [
    "train.epochs=1",
    "train.warmup_epochs=0",
    "train.batch_size=8",
    "data.num_workers=0",
    "train.sync_every=1",
]


def test_the_demo_on_imagenette_is_the_64px_kmim_preset():
    demo = config_to_dict(load_config(None, [*IMAGENETTE, "data.root=/x"]))
    preset = config_to_dict(load_config("configs/imagenette64_kmim.yaml", ["data.root=/x"]))
    assert {k: v for k, v in demo.items() if k != "name"} == {k: v for k, v in preset.items() if k != "name"}
    assert demo_overrides("mnist5k", None) == []


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_pretrains_at_a_tiny_budget(preset, imagenette_root, tmp_path):
    run = tmp_path / "runs" / "p"
    args = ["pretrain", "-c", preset, f"data.root={imagenette_root}", *TINY_BUDGET, f"out_dir={tmp_path / 'runs'}"]
    assert main([*args, "name=p", "-q"]) == 0
    assert (run / "results.json").is_file() and (run / "checkpoints" / "last.pt").is_file()
    assert load_config(None, (), base=yaml.safe_load((run / "config.yaml").read_text())).data.name == "imagenette"


def test_the_demo_runs_on_photos(imagenette_root, tmp_path, capsys):
    out = tmp_path / "demo"
    extra = ["train.batch_size=8", "eval.batch_size=16"]
    assert (
        main(["demo", "--data", "imagenette", "--data-root", str(imagenette_root), "--out", str(out), "--fast", *extra])
        == 0
    )
    report = (out / "report.md").read_text()
    assert "K-MIM vs MAE on imagenette" in report and "of imagenette's 40 training images" in report
    assert "| random init |" in report and (out / "token_maps.png").is_file()
    res = json.loads((out / "results.json").read_text())
    assert res["n_test"] == 20 and set(res["methods"]) == {"kmim", "mae", "random_init"}


def test_the_demo_on_imagenette_needs_its_folder(capsys):
    assert main(["demo", "--data", "imagenette", "--out", "/tmp/never-written"]) == 2
    assert "needs --data-root DIR" in capsys.readouterr().err
