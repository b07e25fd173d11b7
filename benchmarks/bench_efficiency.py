"""Compute efficiency of a K-MIM training step on CPU: achieved FLOP/s / the machine's dense fp32 matmul FLOP/s, and
where the time goes (torch.profiler), for mnist-tiny and a ViT-Tiny-sized model at 32 px.

    python benchmarks/bench_efficiency.py [--steps 10] [--batch 128] [--threads 2] [--profile]

FLOPs of one step (forward + backward; matmuls and attention, the work a GPU's MFU counts) come from
torch.utils.flop_counter.FlopCounterMode. The machine's rate is the median of `torch.mm` on 2048 x 2048 fp32 on the
same threads. The step is the shipped one (tokenizer encode, forward with the head on masked patches, loss,
backward, AdamW) on a fixed batch of mnist5k images, so the data loader is not in it (bench_loader.py measures that).
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_pretrain_step import make_step  # the same training step (this folder is on sys.path when run as a script)
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from kmim.config import ModelConfig, load_config
from kmim.data import stack_dataset
from kmim.engine.optim import build_optimizer
from kmim.fit import fit_tokenizer, training_split
from kmim.models import build_mim, resolve_spec

MODELS = {
    "mnist-tiny": ModelConfig(preset="mnist-tiny"),
    # ViT-Tiny (192 wide, 12 deep, 3 heads) on 4x4 patches of 32x32 images, decoder 128 wide, 2 deep
    "vit-tiny-32px": ModelConfig(
        preset="mnist-tiny", embed_dim=192, depth=12, num_heads=3, decoder_dim=128, decoder_depth=2, decoder_heads=4
    ),
}
GROUPS = {  # profiler op name fragments -> a readable group (first match wins)
    "matmul (linear, bmm)": ("addmm", "aten::mm", "bmm", "aten::linear", "matmul"),
    "attention": ("attention", "softmax"),
    "layer norm": ("layer_norm",),
    "GELU": ("gelu",),
    "optimizer": ("adam", "_foreach", "lerp", "addcdiv", "addcmul", "sqrt"),
    "loss": ("cross_entropy", "nll_loss", "log_softmax"),
    "tokenizer": ("argmin",),
}


def sgemm_gflops(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / sorted(times)[reps // 2] / 1e9


def group_of(op: str) -> str:
    low = op.lower()
    return next((g for g, keys in GROUPS.items() if any(k in low for k in keys)), "other")


def profile_step(step, reps: int = 3) -> dict[str, float]:
    """Share of self CPU time per op group over `reps` steps."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            step()
    shares: dict[str, float] = {}
    for ev in prof.key_averages():
        shares[group_of(ev.key)] = shares.get(group_of(ev.key), 0.0) + ev.self_cpu_time_total
    total = sum(shares.values())
    return {g: v / total for g, v in sorted(shares.items(), key=lambda kv: -kv[1])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = load_config()
    data = training_split(cfg)
    tok = fit_tokenizer(cfg.tokenizer, data, progress=False)  # K = 200 pixel K-means, the demo's
    imgs = stack_dataset(data.ds)[0][: a.batch]  # (B, 1, 32, 32)
    noise = torch.rand(a.batch, 64)  # (B, L)
    peak = sgemm_gflops()
    print(f"torch {torch.__version__}, {a.threads} threads; 2048^2 fp32 torch.mm: {peak:.1f} GFLOP/s")
    print("| model | params (M) | GFLOP/step | ms/step | img/s | GFLOP/s | / sgemm |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    profiles = {}
    for name, mcfg in MODELS.items():
        spec = resolve_spec(mcfg)
        model = build_mim(spec, 32, 1, out_dim=tok.k)
        opt = build_optimizer(model, 1e-4, 0.05, betas=(0.9, 0.95))
        step = make_step(model, opt, tok, "tokens", True, imgs, noise, spec.patch_size)
        with FlopCounterMode(display=False) as fc:
            step()
        flops = fc.get_total_flops()
        times = []
        for _ in range(a.steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        med = sorted(times)[len(times) // 2]
        n_par = sum(p.numel() for p in model.parameters()) / 1e6
        rate = flops / med / 1e9
        print(
            f"| {name} | {n_par:.2f} | {flops / 1e9:.2f} | {1000 * med:.0f} | {a.batch / med:.0f} | {rate:.1f} | "
            f"{rate / peak:.2f} |",
            flush=True,
        )
        if a.profile:
            profiles[name] = profile_step(step)
    for name, shares in profiles.items():
        print(f"\n{name}: share of CPU time by op group (torch.profiler, self time)")
        for g, s in shares.items():
            print(f"  {g:22s} {100 * s:5.1f} %")


if __name__ == "__main__":
    main()
