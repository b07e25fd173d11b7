"""torch.compile of the model's forward + loss (what run.compile does on CUDA) gives the eager step's loss and
gradients, checked on CPU with the inductor backend (slow: compiling takes about a minute here)."""

import pytest
import torch

from kmim.config import load_config
from kmim.engine.objectives import compute_targets, mim_loss, select_patches
from kmim.fit import prepare_tokenizer
from kmim.models import build_mim, resolve_spec


@pytest.mark.slow
def test_compiled_step_equals_eager(tiny_overrides):
    cfg = load_config(None, tiny_overrides)
    tok = prepare_tokenizer(cfg, progress=False)
    torch.manual_seed(0)
    model = build_mim(resolve_spec(cfg.model), 16, 1, out_dim=tok.k)
    imgs, noise = torch.randn(8, 1, 16, 16), torch.rand(8, 16)
    targets = compute_targets(imgs, "tokens", 4, tokenizer=tok, norm_pix=True, labels=None)

    def step(forward):
        model.zero_grad(set_to_none=True)
        pred, ids = forward(imgs, 0.75, noise, masked_only=True)
        loss = mim_loss(pred, select_patches(targets, ids), torch.ones(ids.shape), target="tokens", label_smoothing=0.0)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    eager_loss, eager_grads = step(model)
    compiled_loss, compiled_grads = step(torch.compile(model, backend="inductor"))
    assert torch.allclose(eager_loss, compiled_loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(eager_grads, compiled_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
