"""kmim finetune: the recipe's parts, a tiny run end to end, an exact resume, and its bad inputs."""

import json

import pytest
import torch

from kmim.cli import main
from kmim.engine.optim import Schedule, build_optimizer, set_lr
from kmim.models import EncoderSpec, build_classifier
from tests.conftest import TINY

FT = [
    "finetune.epochs=2",
    "finetune.warmup_epochs=1",
    "finetune.batch_size=8",
    "finetune.hflip=0",
    "finetune.eval_every=1",
    "finetune.log_every=1",
]
KW = {"img_size": 16, "patch_size": 4, "in_chans": 1, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 0}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("ft")
    assert main(["pretrain", "-q", *TINY, f"out_dir={out}", "name=p", "train.epochs=1", "train.warmup_epochs=0"]) == 0
    return out / "p"


def test_layer_decay_scales_the_lr_of_each_block():
    from timm.optim import param_groups_layer_decay

    model = build_classifier(EncoderSpec("vit_tiny_patch16_224", KW), 3, pool="avg", drop_path=0.0)
    groups = param_groups_layer_decay(model, 0.05, model.no_weight_decay(), layer_decay=0.5)
    opt = build_optimizer(model, 1.0, groups=groups)
    set_lr(opt, Schedule(1.0, 10, 0)(0))
    by_param = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    # depth 2: embeddings are layer 0 (0.5^3), block i is layer i + 1 (0.5^(2 - i)), the head layer 3 (1.0)
    assert by_param[id(model.patch_embed.proj.weight)] == pytest.approx(0.125)
    assert by_param[id(model.blocks[0].mlp.fc1.weight)] == pytest.approx(0.25)
    assert by_param[id(model.blocks[1].mlp.fc1.weight)] == pytest.approx(0.5)
    assert by_param[id(model.head.weight)] == pytest.approx(1.0)
    assert model.head.weight.abs().max() < 1e-3  # trunc_normal(std=2e-5) head, as MAE


def test_finetune_runs_and_reports_top1(pretrained, tmp_path, capsys):
    out = str(tmp_path / "runs")
    assert main(["finetune", str(pretrained), "-q", f"out_dir={out}", *FT, "finetune.ema=true"]) == 0
    res = json.loads((tmp_path / "runs/p-finetune/results.json").read_text())
    assert 0 <= res["finetune_top1"] <= 100 and 0 <= res["finetune_ema_top1"] <= 100 and res["steps"] == 6
    assert res["source"].endswith("p/checkpoints/last.pt")
    rows = [json.loads(r) for r in (tmp_path / "runs/p-finetune/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if "test_top1" in r] == [0, 1]
    evaluated = [r["test_top1"] for r in rows if "test_top1" in r]  # the last epoch's and MAE's best, both named
    assert res["finetune_best_top1"] == round(max(evaluated), 2) and res["finetune_top1"] == round(evaluated[-1], 2)
    assert res["finetune_best_epoch"] == 1 + evaluated.index(max(evaluated))
    model = torch.load(tmp_path / "runs/p-finetune/model.pt", weights_only=True)
    import timm

    clf = timm.create_model(model["classifier"]["timm_name"], **model["classifier"]["timm_kwargs"])
    clf.load_state_dict(model["state_dict"])  # loads with timm alone
    assert clf.head.out_features == 3


def test_resumed_finetune_equals_an_uninterrupted_one(pretrained, tmp_path, capsys):
    """Run b is rolled back to its epoch-1 checkpoint (as a kill would leave it) and resumed: it ends equal to a."""
    out = tmp_path / "runs"
    ft = [*FT, "finetune.mixup=0.8", "finetune.drop_path=0.1", "finetune.save_every=1"]
    for name in ("a", "b"):
        assert main(["finetune", str(pretrained), "-q", f"out_dir={out}", f"name={name}", *ft]) == 0
    ckpts = out / "b/checkpoints"
    (ckpts / "last.pt").write_bytes((ckpts / "checkpoint-0001.pt").read_bytes())
    for f in ("model.pt", "results.json"):
        (out / "b" / f).unlink()
    assert main(["finetune", "-q", "--resume", str(out / "b")]) == 0
    a = torch.load(out / "a/model.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "b/model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = (json.loads((out / n / "results.json").read_text()) for n in ("a", "b"))
    assert ra["finetune_top1"] == rb["finetune_top1"] and ra["finetune_best_top1"] == rb["finetune_best_top1"]
    capsys.readouterr()
    assert main(["finetune", "-q", "--resume", str(out / "b"), "finetune.epochs=3", "data.synthetic_classes=4"]) == 2
    assert "the checkpoint's head has 3 classes, data.name=synthetic has 4" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["finetune", "/nonexistent/run"], "checkpoint /nonexistent/run does not exist"),
        (["finetune", "{pretrained}", "model.depth=3"], "drop the model.* overrides"),
        (["finetune", "{pretrained}", "data.img_size=32"], "was pretrained at 16 px: set data.img_size=16"),
        (["finetune", "{pretrained}", "finetune.batch_size=7", "finetune.mixup=0.8"], "must be even: change finetune"),
        (["finetune", "--resume", "{pretrained}"], "is not a kmim finetune run"),
        (["finetune", "{pretrained}", "finetune.randaug=rand-zz9"], "finetune.randaug='rand-zz9' is not valid: timm"),
    ],
)
def test_bad_finetune_inputs(argv, message, pretrained, tmp_path, capsys):
    argv = [a.replace("{pretrained}", str(pretrained)) for a in argv]
    assert main([*argv, "-q", *([f"out_dir={tmp_path}"] if "--resume" not in argv else [])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not any(tmp_path.iterdir())


def test_finetune_refuses_a_checkpoint_of_another_architecture(tmp_path, capsys):
    from kmim.engine.checkpoint import save_checkpoint

    enc = build_classifier(EncoderSpec("vit_tiny_patch16_224", {**KW, "depth": 1}), 0, pool="token", drop_path=0.0)
    spec = {"timm_name": "vit_tiny_patch16_224", "timm_kwargs": {**KW, "depth": 2}}  # says 2 blocks, holds 1
    save_checkpoint(tmp_path / "enc.pt", {"encoder": spec, "state_dict": enc.state_dict()})
    assert main(["finetune", str(tmp_path / "enc.pt"), "-q", *TINY, f"out_dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "do not match the recorded architecture" in err, err
    assert not (tmp_path / "r").exists()


def test_random_init_baseline(tmp_path):
    assert main(["finetune", "--random-init", "-q", *TINY, f"out_dir={tmp_path}", *FT]) == 0
    res = json.loads((tmp_path / "random-init-finetune/results.json").read_text())
    assert res["source"] == "random-init (seed 0)" and 0 <= res["finetune_top1"] <= 100


def test_randaug_posterize_at_full_magnitude_gives_black_not_an_error():
    """m9 + mstd0.5 reaches magnitude 10, where timm's PosterizeIncreasing asks Pillow for 0 bits."""
    import numpy as np
    from PIL import Image

    from kmim.config import DataConfig, FinetuneConfig
    from kmim.data.transforms import finetune_transform

    tf = finetune_transform(
        DataConfig(img_size=32), FinetuneConfig(randaug="rand-m9-mstd0.5-inc1"), (0.5,), std=(0.5,), native=28
    )
    ra = next(t for t in tf.transforms[-1].transforms if hasattr(t, "ops"))
    op = next(o for o in ra.ops if o.name == "PosterizeIncreasing")
    img = Image.fromarray(np.full((8, 8), 200, np.uint8), "L")
    assert np.asarray(op.aug_fn(img, *op.level_fn(10.0, op.hparams))).max() == 0
    assert np.asarray(op.aug_fn(img, 4)).max() == 192  # 200 keeps its 4 top bits: 11000000


def test_finetune_of_an_unfinished_pretraining_run_is_refused(tmp_path, capsys):
    """`kmim finetune RUN` on a run stopped at epoch 1 of 2 names the epoch; --allow-unfinished goes ahead."""
    from kmim.engine.checkpoint import load_checkpoint, save_checkpoint

    out = tmp_path / "runs"
    assert main(["pretrain", "-q", *TINY, f"out_dir={out}", "name=u", "train.epochs=2", "train.save_every=1"]) == 0
    ckpts = out / "u/checkpoints"
    save_checkpoint(ckpts / "last.pt", load_checkpoint(ckpts / "checkpoint-0001.pt"))  # as a kill after epoch 1
    capsys.readouterr()
    assert main(["finetune", str(out / "u"), "-q", f"out_dir={tmp_path / 'ft'}", *FT]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        "is an unfinished pretraining run (epoch 1 of 2): finish it with `kmim pretrain --resume "
        f"{out / 'u'}`, or pass --allow-unfinished to fine-tune it as it is"
    )
    assert not (tmp_path / "ft").exists()
    assert main(["finetune", str(out / "u"), "--allow-unfinished", "-q", f"out_dir={tmp_path / 'ft'}", *FT]) == 0


def test_a_resumed_finetune_logs_each_epoch_once_and_rewrites_its_config(pretrained, tmp_path, capsys):
    out = tmp_path / "runs"
    ft = [*FT, "finetune.save_every=1", "finetune.epochs=3"]
    assert main(["finetune", str(pretrained), "-q", f"out_dir={out}", "name=r", *ft]) == 0
    ckpts = out / "r/checkpoints"
    (ckpts / "last.pt").write_bytes((ckpts / "checkpoint-0001.pt").read_bytes())  # a kill during epoch 2
    (ckpts / ".last.pt.abc.tmp").write_bytes(b"half")  # the temp file a kill leaves
    assert main(["finetune", "-q", "--resume", str(out / "r"), "finetune.eval_every=2"]) == 0
    rows = [json.loads(r) for r in (out / "r/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if "epoch_loss" in r] == [0, 1, 2]
    assert not (ckpts / ".last.pt.abc.tmp").exists()
    assert "eval_every: 2" in (out / "r/config.yaml").read_text()
    capsys.readouterr()
    assert main(["pretrain", "-q", "--resume", str(out / "r")]) == 2
    assert "is a fine-tuning run: resume it with `kmim finetune --resume" in capsys.readouterr().err


def test_each_rank_draws_its_own_drop_path_reproducibly(tmp_path, monkeypatch):
    """Under torchrun every rank seeds torch alike (the model's init), so drop path would drop the same blocks of
    the same batch positions on every rank: each rank reseeds it per micro-batch from (seed, rank, images seen)."""
    from kmim.config import load_config
    from kmim.engine import finetune as ft_module
    from kmim.engine.plan import resolve_plan
    from kmim.launch import _random_source

    source, cfg = _random_source(None, [*TINY, f"out_dir={tmp_path}", *FT, "finetune.drop_path=0.5"])
    trainer = ft_module.Finetuner(resolve_plan(cfg, "finetune"), tmp_path / "r", source, progress=False)
    trainer.model.train()
    torch.nn.init.normal_(trainer.model.head.weight)  # MAE's 2e-5 head makes every loss ln(3)
    imgs, labels = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 0])
    monkeypatch.setattr(ft_module, "get_world_size", lambda: 2)

    def loss(rank):
        monkeypatch.setattr(ft_module, "get_rank", lambda: rank)
        trainer.state.images = 0
        with torch.no_grad():
            return float(trainer._micro_step((imgs.clone(), labels))[0])  # Mixup mixes the batch in place

    assert loss(0) == loss(0) != loss(1)
    assert load_config(None, ()).finetune.drop_path > 0  # the default recipe uses it


def test_resuming_a_finished_run_changes_nothing(tmp_path, capsys):
    """`--resume` (or the same line again) on a finished fine-tuning or pretraining run returns its results and
    writes nothing (it used to add a duplicate metrics row)."""
    from kmim.cli import main
    from tests.conftest import TINY

    out = tmp_path / "runs"
    assert main(["pretrain", "-q", *TINY, f"out_dir={out}", "name=p", "train.epochs=1"]) == 0
    ft = ["finetune", "-q", str(out / "p"), "finetune.epochs=1", "finetune.batch_size=8", "finetune.warmup_epochs=0"]
    assert main(ft) == 0
    for run, again in ((out / "p-finetune", ft), (out / "p", ["pretrain", "--resume", str(out / "p"), "-q"])):
        metrics = (run / "metrics.jsonl").read_text()
        assert main(again) == 0
        assert (run / "metrics.jsonl").read_text() == metrics
    metrics = (out / "p-finetune" / "metrics.jsonl").read_text()
    assert main(["finetune", "--resume", str(out / "p-finetune"), "-q"]) == 0
    assert (out / "p-finetune" / "metrics.jsonl").read_text() == metrics
