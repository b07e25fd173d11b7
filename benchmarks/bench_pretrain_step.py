"""Cost of one K-MIM training step vs one MAE step (same model, same batch), all variants interleaved in one process.

    python benchmarks/bench_pretrain_step.py [--ks 50,200,1000] [--steps 20] [--batch 128] [--threads 2]

Variants: MAE (norm-pix targets), K-MIM with pixel K-means tokenizers at each K, and K-MIM with a feature tokenizer
(K = 200 over the patch features of a frozen mnist-tiny encoder, whose extra forward is reported apart). Each runs
with the prediction head on the masked patches only (what kmim trains with) and on every patch (kmim <= 0.1.0), so
the table is before and after. FLOP ratio = matmul and attention FLOPs of the step (FlopCounterMode) over MAE's,
the ratio the step times would have if every FLOP cost the same. A step = targets (tokenizer encode) + forward +
loss + backward + AdamW step, as in Pretrainer._micro_step. Step i runs every variant once, so machine load hits
them alike; medians are reported.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from kmim.config import load_config
from kmim.data import stack_dataset
from kmim.engine.checkpoint import save_checkpoint
from kmim.engine.objectives import compute_targets, mim_loss, select_patches
from kmim.engine.optim import build_optimizer
from kmim.fit import fit_tokenizer, training_split
from kmim.models import build_encoder, build_mim, encoder_kwargs, resolve_spec


def feature_tokenizer(cfg, data, folder: Path):
    """K = 200 K-means over the patch features of a frozen random-init mnist-tiny encoder saved as encoder.pt."""
    spec = resolve_spec(cfg.model)
    enc = build_encoder(spec, 32, 1)
    meta = {"timm_name": spec.timm_name, "timm_kwargs": encoder_kwargs(spec, 32, 1)}
    save_checkpoint(folder / "encoder.pt", {"encoder": meta, "state_dict": enc.state_dict()})
    ov = ["tokenizer.name=kmeans-features", f"tokenizer.encoder={folder / 'encoder.pt'}", "tokenizer.k=200"]
    return fit_tokenizer(load_config(None, ov).tokenizer, data, progress=False)


def make_step(model, opt, tok, target: str, masked_only: bool, imgs, noise, patch: int):
    """One training step; returns (seconds of the target computation, seconds of the whole step)."""

    def step() -> tuple[float, float]:
        t0 = time.perf_counter()
        tgt = compute_targets(imgs, target, patch, tokenizer=tok, norm_pix=True)
        t1 = time.perf_counter()
        pred, second = model(imgs, 0.75, noise, masked_only=masked_only)
        if masked_only:
            tgt, second = select_patches(tgt, second), torch.ones(second.shape)
        loss = mim_loss(pred, tgt, second, target=target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return t1 - t0, time.perf_counter() - t0

    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ks", default="50,200,1000")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = load_config()
    spec = resolve_spec(cfg.model)
    p = spec.patch_size
    data = training_split(cfg)
    imgs = stack_dataset(data.ds)[0][: a.batch]  # (B, 1, 32, 32)
    noise = torch.rand(a.batch, (32 // p) ** 2)  # (B, L)
    toks = {"MAE norm-pix": None}
    for k in [int(k) for k in a.ks.split(",")]:
        toks[f"K-MIM pixels K={k}"] = fit_tokenizer(load_config(None, [f"tokenizer.k={k}"]).tokenizer, data, False)
    with tempfile.TemporaryDirectory() as tmp:
        toks["K-MIM features K=200"] = feature_tokenizer(cfg, data, Path(tmp))
    steps = {}
    for name, tok in toks.items():
        target = "pixels" if tok is None else "tokens"
        out_dim = p * p if tok is None else tok.k
        for masked_only in (False, True):
            torch.manual_seed(0)
            model = build_mim(spec, 32, 1, out_dim=out_dim)
            opt = build_optimizer(model, 1e-4, cfg.train.weight_decay, betas=(cfg.train.beta1, cfg.train.beta2))
            steps[(name, masked_only)] = make_step(model, opt, tok, target, masked_only, imgs, noise, p)
    flops = {}
    for key, fn in steps.items():  # matmul + attention FLOPs of one step (tokenizer encode included)
        with FlopCounterMode(display=False) as fc:
            fn()
        flops[key] = fc.get_total_flops()
    times = {key: [] for key in steps}
    for i in range(a.steps + 3):
        for key, fn in steps.items():
            t = fn()
            if i >= 3:  # warm-up steps excluded
                times[key].append(t)
    med = {key: (_median([t[0] for t in v]), _median([t[1] for t in v])) for key, v in times.items()}
    print(f"threads={a.threads} batch={a.batch} steps={a.steps} (medians; ratio = to MAE with the same head)")
    print("| variant | head on | ms/step | img/s | targets ms | ratio to MAE | ratio excl. targets | FLOP ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for (name, masked_only), (enc, step) in med.items():
        base = med[("MAE norm-pix", masked_only)][1]
        base_flops = flops[("MAE norm-pix", masked_only)]
        where = "masked patches" if masked_only else "every patch"
        f_ratio = flops[(name, masked_only)] / base_flops
        print(
            f"| {name} | {where} | {1000 * step:.1f} | {a.batch / step:.0f} | {1000 * enc:.2f} | "
            f"{step / base:.3f} | {(step - enc) / base:.3f} | {f_ratio:.3f} |"
        )
    for name in toks:
        before, after = med[(name, False)][1], med[(name, True)][1]
        print(f"{name}: masked-only head / every-patch head step time = {after / before:.3f}")


def _median(v: list[float]) -> float:
    return sorted(v)[len(v) // 2]


if __name__ == "__main__":
    main()
