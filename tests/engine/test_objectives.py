import math

import pytest
import torch

from kmim.config import ModelConfig
from kmim.engine.objectives import compute_targets, masked_cross_entropy, masked_mse, mim_loss, select_patches
from kmim.engine.optim import build_optimizer, effective_lr, lr_at
from kmim.models import build_mim
from kmim.models import resolve_spec as spec_of
from kmim.tokenizers import KMeansTokenizer, PixelSource


def test_masked_cross_entropy_by_hand():
    # two patches, K = 2; patch 0 masked with logits (0, 0) and target 1 -> CE = ln 2
    # patch 1 visible with a huge wrong logit: must be ignored
    logits = torch.tensor([[[0.0, 0.0], [50.0, -50.0]]])
    targets = torch.tensor([[1, 1]])
    mask = torch.tensor([[1.0, 0.0]])
    assert masked_cross_entropy(logits, targets, mask).item() == pytest.approx(math.log(2), abs=1e-6)
    # both masked: mean of ln2 and 100
    both = masked_cross_entropy(logits, targets, torch.ones(1, 2)).item()
    assert both == pytest.approx((math.log(2) + 100.0) / 2, rel=1e-5)


def test_masked_mse_by_hand():
    pred = torch.tensor([[[1.0, 1.0], [9.0, 9.0]]])
    target = torch.tensor([[[0.0, 2.0], [0.0, 0.0]]])
    assert masked_mse(pred, target, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(1.0)
    assert masked_mse(pred, target, torch.tensor([[0.0, 1.0]])).item() == pytest.approx(81.0)


def test_select_patches_by_hand():
    x = torch.tensor([[10, 11, 12], [20, 21, 22]])
    ids = torch.tensor([[2, 0], [1, 1]])
    assert select_patches(x, ids).tolist() == [[12, 10], [21, 21]]
    assert select_patches(x[..., None].expand(-1, -1, 2), ids)[:, :, 1].tolist() == [[12, 10], [21, 21]]


@pytest.mark.parametrize("target", ["tokens", "pixels"])
def test_head_on_masked_patches_only_gives_the_same_loss_and_gradients(target):
    torch.manual_seed(0)
    model, tok = _model_and_tok(k=5 if target == "tokens" else 16)
    imgs, noise = torch.randn(4, 1, 16, 16), torch.rand(4, 16)
    targets = compute_targets(imgs, target, 4, tokenizer=tok)
    losses, grads = [], []
    for masked_only in (False, True):
        model.zero_grad()
        pred, second = model(imgs, 0.75, noise, masked_only=masked_only)
        tgt, mask = targets, second
        if masked_only:
            tgt, mask = select_patches(targets, second), torch.ones(second.shape)
        loss = mim_loss(pred, tgt, mask, target=target)
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    assert torch.allclose(grads[1], grads[0], rtol=1e-4, atol=1e-7)


def _model_and_tok(k=4):
    spec = spec_of(ModelConfig(patch_size=4, embed_dim=32, depth=2, num_heads=2, decoder_dim=16, decoder_heads=2))
    model = build_mim(spec, 16, 1, out_dim=k)
    meta = {"k": k, "patch_size": 4, "in_chans": 1}
    tok = KMeansTokenizer(meta, PixelSource(4, 1), torch.randn(k, 16))
    return model, tok


def test_every_trainable_parameter_gets_a_gradient_and_tokenizer_none():
    torch.manual_seed(0)
    model, tok = _model_and_tok()
    imgs = torch.randn(4, 1, 16, 16, requires_grad=True)
    targets = compute_targets(imgs, "tokens", 4, tokenizer=tok)
    assert not targets.requires_grad and targets.shape == (4, 16)
    pred, mask = model(imgs, 0.75)
    masked_cross_entropy(pred, targets, mask).backward()
    missing = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)
    ]
    assert missing == []
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.endswith("pos_embed"))
    assert list(tok.parameters()) == [] and not tok.centroids.requires_grad


def test_loss_falls_on_a_repeated_batch():
    torch.manual_seed(0)
    model, tok = _model_and_tok()
    imgs = torch.randn(8, 1, 16, 16)
    targets = compute_targets(imgs, "tokens", 4, tokenizer=tok)
    opt = build_optimizer(model, 3e-3, weight_decay=0.0)
    losses = []
    for _ in range(40):
        pred, mask = model(imgs, 0.5)
        loss = masked_cross_entropy(pred, targets, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_weight_decay_only_on_matrices():
    model, _ = _model_and_tok()
    opt = build_optimizer(model, 1e-3, weight_decay=0.05)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        assert (id(p) in decay) == (p.ndim > 1), n  # as MAE: biases and norm weights (1-D) are not decayed


def test_lr_schedule_values():
    assert lr_at(0, 100, 10, lr=1.0, min_lr=0.0) == 0.0
    assert lr_at(5, 100, 10, lr=1.0, min_lr=0.0) == pytest.approx(0.5)
    assert lr_at(10, 100, 10, lr=1.0, min_lr=0.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, lr=1.0, min_lr=0.0) == pytest.approx(0.5)  # halfway through the cosine
    assert lr_at(100, 100, 10, lr=1.0, min_lr=0.1) == pytest.approx(0.1)
    assert effective_lr(1e-3, 128) == pytest.approx(5e-4)
