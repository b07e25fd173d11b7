"""The run's plan resolved at the door: what the trainer reads instead of deriving it again."""

import pytest
import torch

from kmim.cli import main
from kmim.config import load_config, plan_batch
from kmim.engine.plan import resolve_plan
from kmim.errors import KmimError
from kmim.models import resolve_spec
from tests.conftest import TINY


def test_the_plan_holds_the_section_its_spec_batch_split_and_device():
    cfg = load_config(None, [*TINY, "train.micro_batch_size=4", "finetune.batch_size=6"])
    plan = resolve_plan(cfg, "train")
    assert plan.hp is cfg.train and plan.spec == resolve_spec(cfg.model)
    assert (plan.batch.global_batch, plan.batch.micro, plan.batch.accum) == (8, 4, 2)
    assert plan.patches == (16 // 4) ** 2 and plan.device == torch.device("cpu")
    ft = resolve_plan(cfg, "finetune")
    assert ft.hp is cfg.finetune and ft.batch == plan_batch(cfg, "finetune", 1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_that_is_not_here_is_refused_before_any_tokenizer_fit_or_file(tmp_path, capsys):
    with pytest.raises(KmimError, match="run.device=cuda but CUDA is not available"):
        resolve_plan(load_config(None, [*TINY, "run.device=cuda"]), "train")
    assert main(["pretrain", "-q", *TINY, f"out_dir={tmp_path}", "name=r", "run.device=cuda"]) == 2
    assert "run.device=cuda" in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_the_trainer_reads_the_plan_it_is_handed(tmp_path):
    from kmim.engine.pretrain import Pretrainer
    from kmim.fit import prepare_tokenizer

    cfg = load_config(None, [*TINY, f"out_dir={tmp_path}", "name=r", "train.micro_batch_size=4"])
    plan = resolve_plan(cfg, "train")
    trainer = Pretrainer(plan, tmp_path / "r", prepare_tokenizer(cfg, False), progress=False)
    assert trainer.plan is plan and trainer.batch is plan.batch and trainer.device is plan.device
    assert trainer.steps_per_epoch == 24 // 8 and trainer.sampler.batch_size == 4
