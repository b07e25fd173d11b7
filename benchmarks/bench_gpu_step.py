"""K-MIM and MAE training-step throughput and model FLOP utilisation (MFU) on synthetic data, interleaved in one
process: ViT-B/16 at 224 px, bf16 autocast, fused AdamW, on one GPU (or CPU for a smoke run).

    python benchmarks/bench_gpu_step.py [--preset vit-b16] [--img 224] [--batch 128] [--steps 20] [--k 100]
                                        [--compile] [--peak-tflops 989] [--profile]

FLOPs of one step (forward + backward) are counted with torch.utils.flop_counter.FlopCounterMode on the eager model
(compiling under the counter's global hooks would time a different graph); MFU = achieved FLOP/s / the device's dense
bf16 peak (H100/H200 SXM: 989 TFLOP/s; pass --peak-tflops for others). `--profile` prints the share of GPU time per
kernel group over 5 K-MIM steps (torch.profiler).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from kmim.config import ModelConfig
from kmim.engine.objectives import compute_targets, mim_loss, select_patches
from kmim.engine.optim import build_optimizer
from kmim.engine.trainer import autocast_ctx
from kmim.models import build_mim, resolve_spec
from kmim.tokenizers import KMeansTokenizer, PixelSource


def step_fn(model, opt, imgs, target, tok, patch, amp, device):
    def step() -> None:
        tgt = compute_targets(imgs, target, patch, tokenizer=tok, norm_pix=True)
        with autocast_ctx(amp, device):
            pred, ids = model(imgs, 0.75, masked_only=True)  # the head on masked patches only, as kmim trains
            loss = mim_loss(pred, select_patches(tgt, ids), torch.ones(ids.shape, device=device), target=target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="vit-b16")
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    amp = "bf16" if cuda else "off"
    torch.manual_seed(0)
    spec = resolve_spec(ModelConfig(preset=a.preset))
    p = spec.patch_size
    imgs = torch.randn(a.batch, 3, a.img, a.img, device=device)
    meta = {"k": a.k, "patch_size": p, "in_chans": 3}
    tok = KMeansTokenizer(meta, PixelSource(p, 3), torch.randn(a.k, p * p * 3)).to(device)
    steps = {}
    for target, out_dim in (("tokens", a.k), ("pixels", p * p * 3)):
        model = build_mim(spec, a.img, 3, out_dim=out_dim).to(device)
        opt = build_optimizer(model, 1e-4, 0.05, betas=(0.9, 0.95), fused=cuda)
        with FlopCounterMode(display=False) as fc:
            step_fn(model, opt, imgs, target, tok, p, amp, device)()
        fwd = torch.compile(model) if a.compile and cuda else model
        steps[target] = (step_fn(fwd, opt, imgs, target, tok, p, amp, device), fc.get_total_flops())
    times = {t: [] for t in steps}
    for i in range(a.steps + 3):
        for t, (fn, _) in steps.items():
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            if i >= 3:
                times[t].append(time.perf_counter() - t0)
    name = torch.cuda.get_device_name(0) if cuda else "CPU"
    print(f"{name}: {a.preset} {a.img}px batch {a.batch} {amp} compile={a.compile} ({a.steps} steps, median)")
    print("| target | ms/step | img/s | TFLOP/step | TFLOP/s | MFU |")
    print("|---|---:|---:|---:|---:|---:|")
    for t, (_, flops) in steps.items():
        med = sorted(times[t])[len(times[t]) // 2]
        tflops = flops / med / 1e12
        print(
            f"| {t} | {1000 * med:.1f} | {a.batch / med:.0f} | {flops / 1e12:.3f} | {tflops:.1f} | "
            f"{tflops / a.peak_tflops:.3f} |"
        )
    if a.profile and cuda:
        print_profile(steps["tokens"][0])


GROUPS = {  # kernel name fragments -> group (first match wins)
    "attention (flash/SDPA)": ("flash", "fmha", "attention"),
    "matmul (GEMM)": ("gemm", "sm90", "cutlass", "nvjet", "xmma", "matmul"),
    "optimizer (fused AdamW)": ("adam",),
    "layer norm": ("layer_norm", "layernorm"),
    "softmax / cross-entropy": ("softmax", "nll", "cross_entropy"),
    "copies / casts": ("copy", "cast", "convert"),
    "elementwise (GELU, add, ...)": ("elementwise", "vectorized", "gelu", "reduce"),
}


def print_profile(step, reps: int = 5) -> None:
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            step()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.self_device_time_total for e in kernels)
    groups: dict[str, float] = {}
    for e in kernels:
        g = next((g for g, keys in GROUPS.items() if any(k in e.key.lower() for k in keys)), "other")
        groups[g] = groups.get(g, 0.0) + e.self_device_time_total
    print(f"GPU kernel time per K-MIM step: {total / reps / 1000:.1f} ms ({len(kernels)} distinct kernels)")
    for g, t in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {g:30s} {100 * t / total:5.1f} %")
    for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:8]:
        print(f"  {100 * e.self_device_time_total / total:5.1f} %  {e.count // reps:4d}/step  {e.key[:90]}")


if __name__ == "__main__":
    main()
