import pytest
import torch

from kmim.config import load_config
from kmim.eval import evaluate_encoder, load_encoder, pool_tokens
from kmim.eval.knn import top1, weighted_knn_predict
from kmim.eval.probe import linear_probe
from tests.helpers import pretrain_run


def test_weighted_knn_hand_bank():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.7, 0.7]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    q = torch.tensor([[1.0, 0.05], [0.05, 1.0]])
    assert weighted_knn_predict(bank, labels, q, num_classes=2, k=2).tolist() == [0, 1]
    # with k = 5 every point votes; a low temperature makes the nearest ones dominate
    assert weighted_knn_predict(bank, labels, q, num_classes=2, k=5, temperature=0.01).tolist() == [0, 1]
    # a high temperature makes votes nearly equal: 3 of 5 are class 1
    assert weighted_knn_predict(bank, labels, q, num_classes=2, k=5, temperature=100.0).tolist() == [1, 1]


def test_top1():
    assert top1(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 1, 2])) == pytest.approx(75.0)


def test_pool_tokens():
    t = torch.arange(12.0).reshape(1, 3, 4)  # CLS + 2 patches
    assert pool_tokens(t, "cls").tolist() == [[0, 1, 2, 3]]
    assert pool_tokens(t, "mean").tolist() == [[6, 7, 8, 9]]


def test_linear_probe_separable_data():
    torch.manual_seed(0)
    centers = torch.eye(3) * 4
    y = torch.arange(3).repeat_interleave(40)
    x = centers[y] + 0.3 * torch.randn(120, 3)
    res = linear_probe(x, y, x, test_labels=y, num_classes=3, lrs=[0.01, 0.1], epochs=30, batch_size=32)
    assert res["top1"] == 100.0 and res["lr"] in (0.01, 0.1)


def test_evaluate_pretrained_run(tiny_overrides):
    cfg = load_config(None, [*tiny_overrides, "name=ev", "train.target=pixels"])
    run_dir, _ = pretrain_run(cfg, progress=False)
    enc, info = load_encoder(run_dir)
    assert info["config"]["data"]["name"] == "synthetic"
    enc2, _ = load_encoder(run_dir / "encoder.pt")
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(enc.eval().forward_features(x), enc2.eval().forward_features(x))
    res = evaluate_encoder(enc, cfg, progress=False)
    assert res["n_train"] == 24 and res["n_test"] == 24
    assert 0 <= res["knn_top1"] <= 100 and res["knn_top1"] == res["cls"]["knn_top1"]
    assert set(res["mean"]) == {"knn_top1", "linear_probe_top1", "linear_probe_lr", "linear_probe"}
    assert res["linear_probe"].startswith("adamw")  # which probe produced the number


def test_the_default_probe_says_when_the_split_is_too_small_for_its_lr_choice():
    import pytest

    from kmim.errors import KmimError
    from kmim.eval.probe import linear_probe

    x, y = torch.randn(3, 4), torch.tensor([0, 1, 2])  # one image per class
    with pytest.raises(KmimError, match=r"too small for the probe's held-out lr choice.*eval.linear.lrs=\[0.1\]"):
        linear_probe(x, y, x, test_labels=y, num_classes=3, lrs=[0.01, 0.1], epochs=1)
    assert (
        linear_probe(x, y, x, test_labels=y, num_classes=3, lrs=[0.1], epochs=1)["lr"] == 0.1
    )  # one lr: nothing to choose, no split


def test_the_teacher_of_an_online_run_is_evaluated_from_its_ema_weights(tiny_overrides, capsys):
    """--network teacher loads the EMA teacher (the checkpoint's online state; for the finished run its
    tokenizer.pt), not the student; a K-MIM run has none, said in one line."""
    import json as _json

    from kmim.cli import main
    from kmim.config import load_config
    from kmim.eval.features import load_encoder
    from kmim.fit import load_tokenizer
    from tests.helpers import pretrain_run

    ov = [*tiny_overrides, "name=on", "train.target=online-clusters", "train.epochs=1", "train.online.momentum=0.5"]
    run, _ = pretrain_run(load_config(None, ov))
    teacher, info = load_encoder(run, "teacher")
    student, _ = load_encoder(run)
    saved = load_tokenizer(run / "tokenizer.pt").teacher.state_dict()
    assert all(torch.equal(teacher.state_dict()[k], saved[k]) for k in saved) and info["network"] == "teacher"
    assert not all(torch.equal(teacher.state_dict()[k], student.state_dict()[k]) for k in saved)
    last, _ = load_encoder(run / "checkpoints" / "last.pt", "teacher")
    assert all(torch.equal(last.state_dict()[k], saved[k]) for k in saved)
    capsys.readouterr()
    assert main(["knn", "-q", str(run), "--network", "teacher"]) == 0
    assert _json.loads(capsys.readouterr().out)["network"] == "teacher"
    assert "knn_teacher" in _json.loads((run / "evaluations.json").read_text())
    kmim_run, _ = pretrain_run(load_config(None, [*tiny_overrides, "name=k", "train.epochs=1"]))
    assert main(["knn", "-q", str(kmim_run), "--network", "teacher"]) == 2
    assert "is not from an online-clusters run" in capsys.readouterr().err
