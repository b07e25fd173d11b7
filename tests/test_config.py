import pytest

from kmim.config import config_to_dict, config_to_yaml, load_config
from kmim.errors import KmimError


def test_overrides_and_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 7\n  base_lr: 0.01\nmodel:\n  preset: vit-s16\n")
    cfg = load_config(f, ["train.epochs=9", "eval.linear.lrs=[0.5]"])
    assert cfg.train.epochs == 9 and cfg.train.base_lr == 0.01 and cfg.model.preset == "vit-s16"
    assert cfg.eval.linear.lrs == [0.5]
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


# one bad value per checked field; the message names the field and the value
BAD_VALUES = {
    "name": "''",
    "data.img_size": "0",
    "data.aug": "bogus",
    "data.crop_scale_min": "0",
    "data.crop_pad": "-1",
    "data.num_workers": "-1",
    "data.cache": "disk",
    "data.prefetch_factor": "0",
    "data.synthetic_per_class": "0",
    "data.synthetic_classes": "1",
    "tokenizer.k": "1",
    "tokenizer.seed": "-1",
    "tokenizer.niter": "0",
    "tokenizer.init": "bogus",
    "tokenizer.max_points_per_centroid": "0",
    "tokenizer.fit_images": "-1",
    "tokenizer.device": "gpu",
    "tokenizer.batch_size": "0",
    "tokenizer.layer": "-2",
    "tokenizer.hog.cells": "0",
    "tokenizer.hog.bins": "1",
    "tokenizer.supervised.epochs": "0",
    "tokenizer.supervised.lr": "0",
    "tokenizer.supervised.patch_drop": "1.0",
    "tokenizer.vq.dim": "0",
    "tokenizer.vq.hidden": "0",
    "tokenizer.vq.epochs": "0",
    "tokenizer.vq.lr": "-1e-3",
    "tokenizer.vq.beta": "-1",
    "tokenizer.vq.decay": "1.0",
    "model.patch_size": "0",
    "model.embed_dim": "0",
    "model.depth": "0",
    "model.num_heads": "0",
    "model.decoder_dim": "0",
    "model.decoder_depth": "0",
    "model.decoder_heads": "0",
    "model.decoder": "bogus",
    "model.predict_fraction": "0",
    "model.head": "cos",
    "train.target": "bogus",
    "train.label_smoothing": "1.0",
    "train.mask_ratio": "1.5",
    "train.epochs": "0",
    "train.warmup_epochs": "-1",
    "train.batch_size": "0",
    "train.micro_batch_size": "-1",
    "train.base_lr": "0",
    "train.min_lr": "-1",
    "train.weight_decay": "-0.1",
    "train.beta1": "1.0",
    "train.beta2": "-0.5",
    "train.seed": "-1",
    "run.device": "bogus",
    "train.amp": "bogus",
    "train.save_every": "0",
    "train.last_every": "0",
    "train.keep_checkpoints": "-1",
    "train.log_every": "0",
    "train.sync_every": "0",
    "run.wandb_project": "a/b",
    "run.wandb_mode": "bogus",
    "train.health_images": "-1",
    "train.online.target_temp": "0",
    "train.online.pred_temp": "-1",
    "train.online.student_temp": "0",
    "train.online.sinkhorn_iters": "0",
    "train.online.momentum": "1.5",
    "train.online.momentum_truncate": "0",
    "train.online.proto_lr": "0",
    "train.online.proto_weight_decay": "-1",
    "eval.pool": "bogus",
    "eval.batch_size": "0",
    "eval.knn.k": "0",
    "eval.knn.temperature": "0",
    "eval.linear.epochs": "0",
    "eval.linear.batch_size": "0",
    "eval.linear.lrs": "[]",
    "eval.linear.weight_decay": "-1",
    "eval.probe": "sgd",
    "eval.lars.epochs": "0",
    "eval.lars.warmup_epochs": "-1",
    "eval.lars.base_lr": "0",
    "eval.lars.batch_size": "0",
    "eval.lars.micro_batch_size": "-1",
    "eval.attentive.epochs": "0",
    "eval.attentive.warmup_epochs": "-1",
    "eval.attentive.lrs": "[0.0]",
    "eval.attentive.weight_decays": "[-1.0]",
    "eval.attentive.holdout": "0",
    "eval.attentive.batch_size": "0",
    "eval.attentive.micro_batch_size": "-1",
    "finetune.epochs": "0",
    "finetune.warmup_epochs": "-1",
    "finetune.batch_size": "0",
    "finetune.micro_batch_size": "-1",
    "finetune.base_lr": "0",
    "finetune.min_lr": "-1",
    "finetune.weight_decay": "-1",
    "finetune.layer_decay": "0",
    "finetune.drop_path": "1.0",
    "finetune.mixup": "-1",
    "finetune.cutmix": "-1",
    "finetune.mixup_prob": "1.5",
    "finetune.smoothing": "1.0",
    "finetune.reprob": "2",
    "finetune.randaug": "bogus",
    "finetune.crop_scale_min": "0",
    "finetune.hflip": "-0.5",
    "finetune.pool": "max",
    "finetune.ema_decay": "1.0",
    "finetune.holdout": "1.0",
    "finetune.eval_every": "0",
    "finetune.seed": "-1",
    "finetune.amp": "fp8",
    "finetune.save_every": "0",
    "finetune.last_every": "0",
    "finetune.keep_checkpoints": "-1",
    "finetune.log_every": "0",
    "finetune.sync_every": "0",
}
# names checked against registries, and constraints across fields (kmim.resolve)
BAD_COMBINATIONS = [
    (["data.name=bogus"], "data.name='bogus' is not valid: must be one of"),
    (["model.preset=bogus"], "model.preset='bogus' is not valid"),
    (["tokenizer.name=bogus"], "tokenizer.name='bogus' is not valid: must be one of kmeans-pixels"),
    (["tokenizer.supervised.preset=bogus"], "tokenizer.supervised.preset='bogus' is not valid"),
    (["model.embed_dim=100", "model.num_heads=3"], "model.embed_dim=100 is not divisible by model.num_heads=3"),
    (["data.img_size=30"], "data.img_size=30 is not divisible by the patch size 4"),
    (["train.mask_ratio=0.95"], "train.mask_ratio=0.95 leaves 0 of 16 patches visible"),
    (["train.epochs=2", "train.warmup_epochs=3"], "train.warmup_epochs=3 is longer than train.epochs=2"),
    (["train.base_lr=nan"], "train.base_lr=nan is not valid: must be a finite number"),
    (["tokenizer.path=/nonexistent/tok.pt"], "tokenizer.path=/nonexistent/tok.pt does not exist"),
    (["tokenizer.vq_epochs=3"], "tokenizer.vq_epochs was renamed tokenizer.vq.epochs"),
]


def test_every_numeric_or_choice_field_is_checked():
    from kmim.config import CHECKS, field_paths

    free = {
        "out_dir",
        "data.root",
        "data.hflip",
        "tokenizer.path",
        "tokenizer.patch_norm",
        "tokenizer.encoder",
        "tokenizer.encoder_weights",
        "tokenizer.encoder_kwargs",
        "train.norm_pix",
        "train.online.positionwise_sk",
        "run.compile",
        "run.tensorboard",
        "run.wandb",
        "finetune.ema",
    }
    registry = {"data.name", "data.class_list", "model.preset", "tokenizer.name", "tokenizer.supervised.preset"}
    assert set(field_paths()) - free - registry == set(CHECKS) == set(BAD_VALUES)


def _snapshot(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        *[([f"{k}={v}"], f"{k}=") for k, v in BAD_VALUES.items()],
        *BAD_COMBINATIONS,
    ],
)
def test_bad_value_is_one_line_exit_2_and_nothing_written(overrides, message, tmp_path, capsys):
    from kmim.cli import main
    from tests.conftest import TINY

    (tmp_path / "runs").mkdir()
    before = _snapshot(tmp_path)
    tiny = [o for o in TINY if o.split("=")[0] not in {x.split("=")[0] for x in overrides}]  # a miss trains briefly
    assert main(["pretrain", "-q", *tiny, f"out_dir={tmp_path / 'runs'}", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    if message.endswith("="):  # a BAD_VALUES case: the line names the value and what is valid
        value = overrides[0].split("=", 1)[1].strip("'")
        assert f"={value!r}" in err or f"={value} " in err or f"={float(value)!r}" in err, err
        assert "is not valid: must be" in err, err
    assert _snapshot(tmp_path) == before


def test_the_global_batch_is_split_over_processes():
    """batch_size is global: the plan keeps it on any world size, accumulating when the per-process cap asks."""
    from kmim.config import plan_batch

    cfg = load_config("configs/in1k_vitb16_kmim.yaml", ["data.root=/x"])
    plans = {w: plan_batch(cfg, "train", w) for w in (1, 2, 8, 16, 32)}
    assert {p.global_batch for p in plans.values()} == {4096}
    assert [(p.micro, p.accum) for p in plans.values()] == [(256, 16), (256, 8), (256, 2), (256, 1), (128, 1)]
    assert all(p.micro * p.accum * p.world == 4096 for p in plans.values())
    odd = load_config(None, ["train.batch_size=12", "train.micro_batch_size=5"])
    assert (plan_batch(odd, "train", 1).micro, plan_batch(odd, "train", 1).accum) == (4, 3)  # fewest equal steps
    with pytest.raises(KmimError, match=r"train.batch_size=12 is the global batch and does not split evenly over 5"):
        plan_batch(odd, "train", 5)
    lars = plan_batch(cfg, "eval", 8)
    assert (lars.global_batch, lars.micro, lars.accum) == (16384, 512, 4)


def test_presets_resolve_to_the_same_recipe_on_one_and_two_processes():
    """The resolved config of every ImageNet preset is the same whatever the world size (nothing in it is per
    process), and each global batch splits over 1 and 2 processes."""
    from kmim.config import BATCH_FIELDS, config_to_dict, plan_batch

    for preset in (
        "in100_vits16_kmim",
        "in100_vits16_mae",
        "in1k_vitb16_kmim",
        "in1k_vitb16_mae",
        "in100_vits16_finetune",
        "in1k_vitb16_finetune",
        "in100_vits16_online",
        "in1k_vitb16_online",
    ):
        cfg = load_config(f"configs/{preset}.yaml", ["data.root=/x"])
        for name, (section, field, _cap) in BATCH_FIELDS.items():
            one, two = plan_batch(cfg, name, 1), plan_batch(cfg, name, 2)
            hp = cfg
            for part in section.split("."):  # eval.lars, eval.attentive
                hp = getattr(hp, part)
            assert one.global_batch == two.global_batch == getattr(hp, field)
        assert config_to_dict(cfg) == config_to_dict(load_config(f"configs/{preset}.yaml", ["data.root=/x"]))


def test_configs_saved_with_accumulation_load_as_their_global_batch():
    from kmim.config import config_to_dict

    old = config_to_dict(load_config(None, []))
    old["train"].pop("micro_batch_size")
    old["train"].update(batch_size=64, accum_steps=4)
    cfg = load_config(None, [], base=old)
    assert (cfg.train.batch_size, cfg.train.micro_batch_size) == (256, 64)
    with pytest.raises(KmimError, match="train.batch_size is now the global batch"):
        load_config(None, ["train.accum_steps=2"])


def test_settings_moved_to_the_run_section_still_load(tmp_path, capsys):
    """train.device / compile / tensorboard / wandb* moved to run: and each probe's settings to its eval sub-section
    (issue 30): a saved config, a YAML file and an override with the old path all land there; the override says so
    in one line."""
    from kmim.config import load_config

    saved = load_config(None, (), base={"train": {"device": "cpu", "tensorboard": False, "epochs": 3}})
    assert (saved.run.device, saved.run.tensorboard, saved.train.epochs) == ("cpu", False, 3)
    (tmp_path / "old.yaml").write_text("train: {wandb_project: p, compile: true}\n")
    assert load_config(tmp_path / "old.yaml").run.wandb_project == "p"
    capsys.readouterr()
    assert load_config(None, ["train.device=cpu"]).run.device == "cpu"
    assert capsys.readouterr().err.strip() == "note: train.device is now run.device (read as run.device)"
    assert "device" not in config_to_dict(saved)["train"]
    old = load_config(None, (), base={"eval": {"lars_epochs": 12, "knn_k": 5, "probe_lrs": [0.5], "pool": "mean"}})
    assert (old.eval.lars.epochs, old.eval.knn.k, old.eval.linear.lrs, old.eval.pool) == (12, 5, [0.5], "mean")
    assert load_config(None, ["eval.attentive_holdout=0.2"]).eval.attentive.holdout == 0.2
    assert "eval.attentive_holdout is now eval.attentive.holdout" in capsys.readouterr().err
