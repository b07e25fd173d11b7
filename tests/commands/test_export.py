"""`kmim export`: a folder that timm alone loads (features identical to encoder.pt), with a model card."""

import json

import timm
import torch

from kmim.cli import main
from kmim.config import load_config
from tests.helpers import pretrain_run


def test_export_round_trip_with_timm_alone(tiny_overrides, tmp_path, capsys):
    run_dir, _ = pretrain_run(load_config(None, [*tiny_overrides, "name=ex"]))
    assert main(["knn", "-q", str(run_dir)]) == 0  # recorded in the run's evaluations.json
    knn = json.loads(capsys.readouterr().out)["knn_top1"]
    out = tmp_path / "hub"
    assert main(["export", str(run_dir), "--out", str(out), "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    ckpt = torch.load(run_dir / "encoder.pt", weights_only=True)
    ref = timm.create_model(ckpt["encoder"]["timm_name"], **ckpt["encoder"]["timm_kwargs"]).eval()
    ref.load_state_dict(ckpt["state_dict"])
    chans = ckpt["encoder"]["timm_kwargs"]["in_chans"]
    x = torch.randn(2, chans, 16, 16)
    assert torch.equal(model.forward_features(x), ref.forward_features(x))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_classes"] == 0 and cfg["pretrained_cfg"]["interpolation"] == "bicubic"
    assert cfg["pretrained_cfg"]["crop_pct"] == 0.875 and cfg["pretrained_cfg"]["input_size"] == [chans, 16, 16]
    assert len(cfg["pretrained_cfg"]["mean"]) == chans and model.patch_embed.proj.in_channels == chans
    assert (cfg["pretrained_cfg"]["tag"], cfg["pretrained_cfg"]["license"]) == ("kmim", "mit")  # not timm's weights'
    assert model.pretrained_cfg["input_size"] == (chans, 16, 16)
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: timm\n") and f"| knn_top1 | {knn} |" in card
    capsys.readouterr()
    assert main(["export", str(run_dir), "--out", str(out)]) == 2  # never replaces a folder
    assert "already exists" in capsys.readouterr().err


def test_export_of_something_else_is_refused(tmp_path, capsys):
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    assert main(["export", str(tmp_path / "x.pt"), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()
