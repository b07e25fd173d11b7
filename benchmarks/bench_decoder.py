"""MAE's decoder against the cross-attention predictor (`model.decoder=cross`, issue 28), one process, side by side:
FLOPs of one training step (forward + backward, torch.utils.flop_counter) and its wall time, K-MIM (cross-entropy on
K = 50 ids) and MAE (MSE on pixels), at the ImageNet presets' geometries (ViT-S/16 and ViT-B/16, 224 px) and the
small CPU preset (mnist-tiny at 64 px, 8x8 patches). The cross predictor keeps the preset's decoder width, depth and
heads (CrossMAE's comparison); it predicts 100 % or 25 % of the masked patches (`model.predict_fraction`).

    python benchmarks/bench_decoder.py [--batch 8] [--steps 3] [--device cuda]   (cuda: bf16 autocast, as training)

Ratios are to the MAE decoder at the same geometry and target; times are the median of `--steps` steps after one
warm-up step, the variants interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from kmim.config import ModelConfig
from kmim.models import build_mim, resolve_spec

GEOMETRIES = {  # name: (model config, image side)
    "ViT-S/16 224": (ModelConfig(preset="vit-s16"), 224),
    "ViT-B/16 224": (ModelConfig(preset="vit-b16"), 224),
    "mnist-tiny p8 64": (ModelConfig(preset="mnist-tiny", patch_size=8), 64),
}
VARIANTS = {"mae": ("mae", 1.0), "cross 100%": ("cross", 1.0), "cross 25%": ("cross", 0.25)}
K = 50


def _step(model: torch.nn.Module, imgs: torch.Tensor, noise: torch.Tensor, target: str) -> None:
    cuda = imgs.device.type == "cuda"
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
        pred, ids = model(imgs, 0.75, noise, masked_only=True)  # (B, P, out), (B, P)
    if target == "tokens":
        loss = F.cross_entropy(pred.flatten(0, 1), (ids.flatten() * 7) % K)
    else:
        loss = pred.float().pow(2).mean()
    loss.backward()
    if cuda:
        torch.cuda.synchronize()


def measure(
    geometry: str, target: str, *, batch: int, steps: int, device: str = "cpu"
) -> dict[str, tuple[float, float]]:
    cfg, side = GEOMETRIES[geometry]
    imgs = torch.randn(batch, 3, side, side, device=device)
    models = {}
    for name, (decoder, fraction) in VARIANTS.items():
        spec = resolve_spec(ModelConfig(**{**cfg.__dict__, "decoder": decoder, "predict_fraction": fraction}))
        out = K if target == "tokens" else spec.patch_size**2 * 3
        torch.manual_seed(0)
        models[name] = build_mim(spec, side, 3, out_dim=out).to(device)
    n = models["mae"].num_patches
    noise = torch.rand(batch, n, generator=torch.Generator().manual_seed(0)).to(device)
    flops = {}
    for name, m in models.items():
        with FlopCounterMode(display=False) as fc:
            _step(m, imgs, noise, target)
        flops[name] = fc.get_total_flops() / batch
    times: dict[str, list[float]] = {name: [] for name in models}
    for m in models.values():  # warm-up (CUDA kernels, allocator)
        _step(m, imgs, noise, target)
    for _ in range(steps):
        for name, m in models.items():
            t = time.perf_counter()
            _step(m, imgs, noise, target)
            times[name].append(time.perf_counter() - t)
    return {name: (flops[name], statistics.median(times[name]) / batch) for name in models}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="cpu", help="cpu (fp32) or cuda (bf16 autocast)")
    args = p.parse_args()
    where = "fp32, CPU" if args.device == "cpu" else f"bf16 autocast, {torch.cuda.get_device_name(0)}"
    print(f"{torch.get_num_threads()} threads, batch {args.batch}, median of {args.steps} steps ({where})")
    print(
        f"{'geometry':18s} {'target':7s} {'decoder':11s} {'GFLOP/img':>10s} {'ratio':>6s} {'ms/img':>8s} {'ratio':>6s}"
    )
    for geometry in GEOMETRIES:
        for target in ("tokens", "pixels"):
            res = measure(geometry, target, batch=args.batch, steps=args.steps, device=args.device)
            f0, t0 = res["mae"]
            for name, (f, t) in res.items():
                print(
                    f"{geometry:18s} {target:7s} {name:11s} {f / 1e9:10.2f} {f / f0:6.2f} {1e3 * t:8.1f} {t / t0:6.2f}"
                )


if __name__ == "__main__":
    main()
