import pytest

from kmim.config import config_to_dict, config_to_yaml, load_config
from kmim.errors import KmimError


def test_overrides_and_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 7\n  base_lr: 0.01\nmodel:\n  preset: vit-s16\n")
    cfg = load_config(f, ["train.epochs=9", "eval.probe_lrs=[0.5]"])
    assert cfg.train.epochs == 9 and cfg.train.base_lr == 0.01 and cfg.model.preset == "vit-s16"
    assert cfg.eval.probe_lrs == [0.5]
    assert load_config(None, (), base=config_to_dict(cfg)) == cfg
    assert "epochs: 9" in config_to_yaml(cfg)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.epoch=5"], "bad config key or value at 'train.epoch'"),
        (["train.epochs=many"], "'train.epochs'"),
        (["epochs"], "not of the form section.key=value"),
    ],
)
def test_bad_overrides(overrides, message):
    with pytest.raises(KmimError, match=message):
        load_config(None, overrides)


def test_bad_files(tmp_path):
    with pytest.raises(KmimError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(KmimError, match="not valid YAML"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("trian:\n  epochs: 3\n")
    with pytest.raises(KmimError, match=r"typo.yaml: bad config key"):
        load_config(typo)


def test_presets_in_configs_dir_load():
    from pathlib import Path

    presets = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert len(presets) >= 4
    for p in presets:
        load_config(p)
