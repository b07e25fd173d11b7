"""CUDA paths (bf16 autocast, fp16 with GradScaler, fused AdamW, torch.compile, tokenizer on the GPU); skipped on
machines without CUDA. benchmarks/gpu_check.sh runs them on a GPU machine."""

import json

import pytest
import torch

from kmim.cli import main
from tests.conftest import TINY

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize(
    "extra",
    [
        ["train.amp=auto"],
        ["train.amp=fp16"],
        ["run.compile=true"],
        ["train.target=online-clusters", "train.health_images=12"],
    ],
)
def test_pretrain_on_cuda(extra, tmp_path):
    assert main(["pretrain", "-q", *TINY, f"out_dir={tmp_path}", "name=r", "run.device=cuda", *extra]) == 0
    res = json.loads((tmp_path / "r/results.json").read_text())
    assert res["steps"] == 6 and res["final_epoch_loss"] < 10


def test_tokenizer_ids_on_cuda_equal_cpu(tmp_path):
    from kmim.fit import load_tokenizer

    assert main(["tokenize", "-q", *TINY, "--out", str(tmp_path / "t.pt")]) == 0
    tok = load_tokenizer(tmp_path / "t.pt")
    imgs = torch.randn(4, 1, 16, 16)
    assert torch.equal(tok.encode(imgs), tok.to("cuda").encode(imgs.cuda()).cpu())


def test_finetune_on_cuda(tmp_path):
    ft = ["finetune.epochs=1", "finetune.warmup_epochs=0", "finetune.batch_size=8", "run.device=cuda"]
    assert main(["finetune", "--random-init", "-q", *TINY, f"out_dir={tmp_path}", *ft]) == 0


def test_attentive_probe_on_cuda(tmp_path):
    att = [
        "eval.probe=attentive",
        "eval.attentive.epochs=1",
        "eval.attentive.warmup_epochs=0",
        "eval.attentive.batch_size=8",
        "run.device=cuda",
        "data.synthetic_per_class=16",
    ]
    assert main(["probe", "--random-init", "-q", *TINY, *att]) == 0
