"""Cost of one K-MIM training step vs one MAE step (same model, same batch), and the tokenizer's share of it.

    python benchmarks/bench_pretrain_step.py [--steps 30] [--batch 128] [--threads 2]

Both targets run interleaved in the same process, so machine load affects them alike.
"""

from __future__ import annotations

import argparse
import time

import torch

from kmim.config import load_config
from kmim.data import stack_dataset
from kmim.engine.objectives import compute_targets, mim_loss
from kmim.engine.optim import build_optimizer
from kmim.fit import fit_tokenizer, training_split
from kmim.models import build_mim, resolve_spec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, default=200)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = load_config(None, [f"tokenizer.k={a.k}"])
    spec = resolve_spec(cfg.model)
    data = training_split(cfg)
    tok = fit_tokenizer(cfg.tokenizer, data, progress=False)
    imgs = stack_dataset(data.ds)[0][: a.batch]  # (B, 1, 32, 32)
    models = {
        "tokens": build_mim(spec, 32, 1, a.k),
        "pixels": build_mim(spec, 32, 1, spec.patch_size**2),
    }
    opts = {
        k: build_optimizer(m, 1e-4, cfg.train.weight_decay, (cfg.train.beta1, cfg.train.beta2))
        for k, m in models.items()
    }
    times = {k: [] for k in models}
    tok_times = []
    for i in range(a.steps + 3):
        for target, model in models.items():
            t0 = time.perf_counter()
            tgt = compute_targets(imgs, target, spec.patch_size, tok, norm_pix=True)
            t1 = time.perf_counter()
            pred, mask = model(imgs, 0.75)
            loss = mim_loss(pred, tgt, mask, target)
            opts[target].zero_grad()
            loss.backward()
            opts[target].step()
            if i >= 3:  # warm-up steps excluded
                times[target].append(time.perf_counter() - t0)
                if target == "tokens":
                    tok_times.append(t1 - t0)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    tok_med = sorted(tok_times)[len(tok_times) // 2]
    print(f"threads={a.threads} batch={a.batch} K={a.k} steps={a.steps} (median per step)")
    for k, v in med.items():
        print(f"  target={k:7s} {1000 * v:7.1f} ms/step  {a.batch / v:7.0f} img/s")
    print(f"  tokenizer encode {1000 * tok_med:.2f} ms/step = {100 * tok_med / med['tokens']:.1f}% of a K-MIM step")
    print(f"  ratio K-MIM / MAE step time: {med['tokens'] / med['pixels']:.3f}")


if __name__ == "__main__":
    main()
