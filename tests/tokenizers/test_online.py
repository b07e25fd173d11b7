"""The online clustering tokenizer: Sinkhorn-Knopp's marginals, the EMA formula, the file round trip."""

import math

import pytest
import torch
from torch import nn

from kmim.engine.optim import ema_momentum
from kmim.tokenizers.online import OnlineClusters, assignment_entropy, sinkhorn_knopp, soft_cross_entropy


def test_sinkhorn_on_a_hand_made_matrix_is_doubly_stochastic():
    """4 images x 1 position x 2 prototypes; every image prefers prototype 0, so a plain softmax would put nearly
    all the mass there. Rows sum to 1 and columns to 4 / 2 = 2."""
    s = torch.tensor([[[3.0, 0.0]], [[2.0, 0.0]], [[1.0, 0.0]], [[0.5, 0.0]]])  # (B=4, L=1, K=2)
    q = sinkhorn_knopp(s, iters=200)
    assert torch.allclose(q.sum(-1), torch.ones(4, 1), atol=1e-4)
    assert torch.allclose(q.sum(0), torch.full((1, 2), 2.0), atol=1e-4)
    assert q[0, 0, 0] > q[3, 0, 0]  # the strongest preference keeps the most mass on prototype 0
    assert torch.softmax(s, -1)[:, 0, 0].sum() > 3.0  # (the imbalance Sinkhorn removes)


def test_sinkhorn_after_few_iterations_rows_are_exact_and_columns_move_to_uniform():
    torch.manual_seed(0)
    s = torch.randn(16, 3, 5) * 4  # (B, L, K)
    q1, q3 = sinkhorn_knopp(s, iters=1), sinkhorn_knopp(s, iters=3)
    assert torch.allclose(q3.sum(-1), torch.ones(16, 3), atol=1e-5)
    target = torch.full((3, 5), 16 / 5)
    assert (q3.sum(0) - target).abs().max() < (q1.sum(0) - target).abs().max()


def test_sinkhorn_ignores_a_shift_shared_by_a_column_and_survives_large_scores():
    torch.manual_seed(1)
    s = torch.randn(8, 2, 4)
    shifted = s + torch.tensor([100.0, -50.0, 3.0, 0.0])  # one constant per prototype
    assert torch.allclose(sinkhorn_knopp(s, 3), sinkhorn_knopp(shifted, 3), atol=1e-5)
    cosine = torch.tanh(s) * 4  # scores of unit features against N(0, 1) prototypes: a few units
    big = sinkhorn_knopp(cosine / 0.06, 3)  # at CAPI's teacher temperature: up to ~130 apart, fp32 copes
    assert torch.isfinite(big).all() and torch.allclose(big.sum(-1), torch.ones(8, 2), atol=1e-5)
    extreme = sinkhorn_knopp(s / 1e-3, 3)  # thousands apart: rows far below every column's max underflow to 0
    assert torch.isfinite(extreme).all()  # (zero rows, never NaN: such patches then carry no target)


def test_sinkhorn_column_sums_go_through_the_reduction():
    """Under torchrun the column sums are summed over processes: a reduction that doubles them halves Q before the
    row step, which the row normalisation then undoes; a reduction that weighs the prototypes unequally (as other
    processes' images would) changes the result, so the reduction is really applied."""
    torch.manual_seed(2)
    s = torch.randn(6, 1, 3)
    plain = sinkhorn_knopp(s, 1)
    assert torch.allclose(sinkhorn_knopp(s, 1, reduce_sum=lambda c: 2 * c), plain, atol=1e-6)
    uneven = sinkhorn_knopp(s, 1, reduce_sum=lambda c: c * torch.tensor([1.0, 2.0, 4.0]))
    assert not torch.allclose(uneven, plain, atol=1e-3)


def test_soft_cross_entropy_and_entropy_by_hand():
    logits = torch.tensor([[0.0, 0.0]])
    q = torch.tensor([[1.0, 0.0]])
    assert soft_cross_entropy(logits, q, temp=0.5).item() == pytest.approx(math.log(2))
    assert assignment_entropy(torch.tensor([[0.5, 0.5]])).item() == pytest.approx(math.log(2))
    assert assignment_entropy(q).item() == 0.0


def _meta(k=5):
    kwargs = {
        "img_size": 8,
        "patch_size": 4,
        "in_chans": 1,
        "embed_dim": 16,
        "depth": 1,
        "num_heads": 2,
        "num_classes": 0,
        "global_pool": "token",
    }
    return {
        "k": k,
        "patch_size": 4,
        "in_chans": 1,
        "feature_dim": 16,
        "normalization": {"mean": [0.0], "std": [1.0]},
        "encoder": {"timm_name": "vit_tiny_patch16_224", "timm_kwargs": kwargs},
        "target_temp": 0.06,
        "pred_temp": 0.12,
        "sinkhorn_iters": 3,
    }


def test_ema_update_equals_its_formula_on_a_tiny_model():
    tok = OnlineClusters.create(_meta(), seed=0)
    student = OnlineClusters.create(_meta(), seed=1).teacher
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    before = {k: v.clone() for k, v in tok.teacher.state_dict().items()}
    tok.ema_update(student, 0.9)
    s = student.state_dict()
    for k, v in tok.teacher.state_dict().items():
        assert torch.allclose(v, 0.9 * before[k] + 0.1 * s[k], atol=1e-6), k
    tok.copy_from(student)
    assert all(torch.equal(v, s[k]) for k, v in tok.teacher.state_dict().items())


def test_ema_momentum_schedule():
    assert ema_momentum(0, 100, 10, base=0.99) == 1.0
    assert ema_momentum(5, 100, 10, base=0.99) == pytest.approx(0.995)
    assert ema_momentum(10, 100, 10, base=0.99) == pytest.approx(0.99)
    assert ema_momentum(55, 100, 10, base=0.99) == pytest.approx(0.995)
    assert ema_momentum(100, 100, 10, base=0.99) == pytest.approx(1.0)


def test_encode_round_trips_through_a_tokenizer_file(tmp_path):
    from kmim.fit import load_tokenizer

    tok = OnlineClusters.create(_meta(k=5), seed=3)
    imgs = torch.randn(2, 1, 8, 8)
    ids = tok.encode(imgs)
    assert ids.shape == (2, 4) and ids.dtype == torch.int64 and int(ids.max()) < 5
    tok.save(tmp_path / "t.pt")
    again = load_tokenizer(tmp_path / "t.pt")
    assert isinstance(again, OnlineClusters) and torch.equal(again.encode(imgs), ids)
    assert isinstance(tok.prototypes, nn.Linear) and tok.prototypes.weight.std() > 0.5  # N(0, 1) init, CAPI's


def test_truncated_momentum_schedule_is_capis():
    """CAPI cuts the cosine at 0.8 of its length: the last step's momentum is 1 - (1 - m)(1 + cos(0.8 pi)) / 2."""
    end = 1 - 0.001 * 0.5 * (1 + math.cos(0.8 * math.pi))
    assert ema_momentum(100, 100, 10, base=0.999, truncate=0.8) == pytest.approx(end) and end == pytest.approx(
        0.9999045, abs=1e-7
    )
    assert ema_momentum(55, 100, 10, base=0.999, truncate=0.8) == pytest.approx(
        1 - 0.001 * 0.5 * (1 + math.cos(0.4 * math.pi))
    )
    assert ema_momentum(5, 100, 10, base=0.999, truncate=0.8) == ema_momentum(5, 100, 10, base=0.999)  # warmup alike
    assert all(
        ema_momentum(s, 100, 10, base=0.99, truncate=1.0) == ema_momentum(s, 100, 10, base=0.99) for s in range(101)
    )


def _capi_global_sinkhorn(scores: torch.Tensor, iters: int) -> torch.Tensor:
    """CAPI's positionwise_sk=False, written out: every patch of the batch is a row, one set of column sums."""
    q = torch.exp(scores.reshape(-1, scores.shape[-1]) - scores.max())  # (B * L, K)
    for _ in range(iters):
        q = q / q.sum(dim=0, keepdim=True)
        q = q / q.sum(dim=1, keepdim=True)
    return q.reshape(scores.shape)


def test_sinkhorn_over_all_patches_balances_the_whole_batch():
    torch.manual_seed(0)
    tok = OnlineClusters.create({**_meta(k=4), "positionwise_sk": False, "sinkhorn_iters": 200}, seed=0)
    logits = torch.randn(6, 3, 4) * 0.1  # (B, L, K), scores / 0.06 spread over ~10 nats
    q = tok.assign(logits)
    assert torch.allclose(q.sum(-1), torch.ones(6, 3), atol=1e-4)
    assert torch.allclose(q.sum((0, 1)), torch.full((4,), 6 * 3 / 4), atol=1e-4)  # one marginal over all patches
    assert not torch.allclose(q.sum(0), torch.full((3, 4), 6 / 4), atol=1e-2)  # not balanced per position
    assert torch.allclose(q, _capi_global_sinkhorn(logits / 0.06, 200), atol=1e-5)
    positionwise = OnlineClusters.create({**_meta(k=4), "sinkhorn_iters": 200}, seed=0).assign(logits)  # old files
    assert torch.allclose(positionwise.sum(0), torch.full((3, 4), 6 / 4), atol=1e-4)


def test_a_config_saved_before_the_truncation_keeps_the_full_cosine():
    from kmim.config import config_to_dict, load_config

    saved = config_to_dict(load_config(None, ["train.target=online-clusters"]))
    del saved["train"]["online"]["momentum_truncate"]
    assert load_config(None, [], base=saved).train.online.momentum_truncate == 1.0
    offline = config_to_dict(load_config(None, []))  # a K-MIM run never read the key: it takes today's default,
    del offline["train"]["online"]["momentum_truncate"]  # so it still equals the same settings written today
    assert load_config(None, [], base=offline) == load_config(None, [])
    assert (
        load_config(None, []).train.online.momentum_truncate == 0.8
        and load_config(None, []).train.online.positionwise_sk
    )
