"""Throughput of the loop users run: `kmim pretrain`'s Trainer (its loader, per-step work, logging, checkpoint
writes) for K-MIM PIXEL and MAE, interleaved in one process, on the real presets.

    python benchmarks/bench_gpu_train.py [--preset vit-b16|vit-s16] [--batch 128] [--steps 30] [--folder DIR]
                                          [--compile] [--sync-every 1] [--repeats 2] [--profile] [--peak-tflops 989]

Each measurement runs `train.epochs=2` over a training set sized to `--steps` steps per epoch; epoch 1 is the warm-up
(allocator, cudnn, compile) and epoch 2 the measured one: its img/s comes from the Trainer's own epoch row. Data:
`synthetic` (default: batches already on the device, the loader replaced, so the step alone is measured; kmim's
synthetic images have 1 channel, which changes the patch embedding's 0.4 % of the FLOPs) or an
ImageFolder (`--folder`, e.g. the rehearsal folder of benchmarks/rehearse_imagenet.py) read by the real loader with
`data.num_workers` = the machine's cores (epochs of `--steps` steps over the folder's first images); its loader
alone is timed too. MFU = FLOPs per image (FlopCounterMode,
counted once on the eager model outside the timed region) x img/s / peak. `--profile` adds the GPU's busy fraction
over 10 K-MIM steps (torch.profiler: device kernel time / wall time) and the attention kernels that ran.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from kmim.config import load_config
from kmim.engine.plan import resolve_plan
from kmim.engine.pretrain import Pretrainer
from kmim.fit import prepare_tokenizer

PRESETS = {"vit-b16": "configs/in1k_vitb16_kmim.yaml", "vit-s16": "configs/in100_vits16_kmim.yaml"}


class DeviceBatches:
    """The same device batch (images, labels, mask noise) `steps` times per epoch: the step without a loader."""

    def __init__(self, batch: tuple[torch.Tensor, ...], steps: int) -> None:
        self.batch, self.steps = batch, steps

    def __iter__(self):
        return iter([self.batch] * self.steps)


def config(args: argparse.Namespace, target: str, root: str | None):
    n_img = args.batch * args.steps
    data = (
        [f"data.root={root}", f"data.num_workers={os.cpu_count()}"]
        if root
        else [
            "data.name=synthetic",
            "data.img_size=224",
            "data.synthetic_classes=2",
            "data.num_workers=0",
            f"data.synthetic_per_class={n_img // 2 + 1}",
            "data.aug=none",
            "data.hflip=false",
        ]
    )
    sync = args.sync_every
    over = [
        *data,
        f"model.preset={args.preset}",
        "train.epochs=2",
        "train.warmup_epochs=0",
        f"train.batch_size={args.batch}",
        "train.micro_batch_size=0",
        f"train.target={target}",
        f"run.compile={str(args.compile).lower()}",
        f"train.sync_every={sync}",
        f"train.log_every={max(sync, 20 // sync * sync)}",
        "train.save_every=100",
        "tokenizer.fit_images=256",
        "tokenizer.niter=5",
        "run.tensorboard=false",
        f"run.device={args.device}",
    ]
    return load_config(PRESETS[args.preset], over)


def flops_per_image(trainer: Pretrainer, batch: tuple[torch.Tensor, ...]) -> float:
    """Forward + backward FLOPs of one micro-step on 2 images, per image, on the eager model."""
    small = tuple(x[:2] for x in batch)
    with FlopCounterMode(display=False) as fc:
        loss, _ = trainer._micro_step(small)
        loss.backward()
    trainer.opt.zero_grad(set_to_none=True)
    return fc.get_total_flops() / 2


def measure(args: argparse.Namespace, target: str, root: str | None) -> dict[str, float]:
    cfg = config(args, target, root)
    tok = prepare_tokenizer(cfg, progress=False)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as d:
        trainer = Pretrainer(resolve_plan(cfg, "train"), Path(d), tok, progress=False)
        trainer.sampler.n = min(trainer.sampler.n, args.batch * args.steps)  # a folder: its first images only
        trainer.epoch_hooks.append(rows.append)
        trainer.sampler.set_epoch(0)
        first = next(iter(trainer.loader))
        batch = tuple(x.to(trainer.device) for x in first)
        flops = flops_per_image(trainer, batch)
        if root is None:
            trainer.loader = DeviceBatches(batch, trainer.steps_per_epoch)
        loader_img_s = loader_rate(trainer) if root else float("nan")
        t0 = time.perf_counter()
        trainer.run()
        wall = time.perf_counter() - t0
        mem = torch.cuda.max_memory_allocated() / 2**30 if trainer.device.type == "cuda" else float("nan")
    return {"img_s": rows[1]["img_per_s"], "flops": flops, "loader_img_s": loader_img_s, "mem_gib": mem, "wall_s": wall}


def loader_rate(trainer: Pretrainer, batches: int = 20) -> float:
    trainer.sampler.set_epoch(1)
    it, n, t0 = iter(trainer.loader), 0, time.perf_counter()
    for _ in range(min(batches, len(trainer.sampler))):
        n += next(it)[0].shape[0]
    return n / (time.perf_counter() - t0)


def profile_busy(args: argparse.Namespace) -> None:
    """The GPU's busy fraction over 10 K-MIM steps and the attention kernels used (at L = 50 visible + 1 and in the
    197-token decoder)."""
    from torch.profiler import ProfilerActivity, profile

    cfg = config(args, "tokens", None)
    tok = prepare_tokenizer(cfg, progress=False)
    with tempfile.TemporaryDirectory() as d:
        tr = Pretrainer(resolve_plan(cfg, "train"), Path(d), tok, progress=False)
        tr.sampler.set_epoch(0)
        batch = tuple(x.to(tr.device) for x in next(iter(tr.loader)))
        for _ in range(3):
            tr._micro_step(batch)[0].backward()
            tr.opt.step()
            tr.opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            for _ in range(10):
                tr._micro_step(batch)[0].backward()
                tr.opt.step()
                tr.opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            wall_us = (time.perf_counter() - t0) * 1e6
    events = prof.key_averages()
    busy = sum(e.self_device_time_total for e in events) / wall_us
    attn = sorted(
        {
            e.key[:60]
            for e in events
            if any(s in e.key.lower() for s in ("flash", "fmha", "efficient", "attention", "sdpa"))
        }
    )
    print(f"GPU busy fraction over 10 K-MIM steps: {busy:.2f} (idle {1 - busy:.2f}); attention kernels: {attn}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=list(PRESETS), default="vit-b16")
    ap.add_argument("--batch", type=int, default=128, help="images per step (one process)")
    ap.add_argument("--steps", type=int, default=30, help="steps per epoch")
    ap.add_argument("--folder", default=None, help="an ImageFolder root instead of device batches")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--sync-every", type=int, default=1, help="train.sync_every (host reads of the loss)")
    ap.add_argument("--repeats", type=int, default=2, help="K-MIM / MAE pairs, interleaved")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100/H200 SXM: 989)")
    args = ap.parse_args()
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    data = f"folder {args.folder}" if args.folder else "device batches"
    print(
        f"{name}; {args.preset} 224 px, batch {args.batch}, {args.steps} steps/epoch, compile={args.compile}, "
        f"sync_every={args.sync_every}, data={data}"
    )
    res: dict[str, list[dict]] = {"tokens": [], "pixels": []}
    for _ in range(args.repeats):
        for target in res:
            res[target].append(measure(args, target, args.folder))
    print("| target | img/s (median) | TFLOP/s | MFU | loader img/s | peak mem GiB |\n|---|---:|---:|---:|---:|---:|")
    for target, runs in res.items():
        img_s = statistics.median(r["img_s"] for r in runs)
        tflops = img_s * runs[0]["flops"] / 1e12
        print(
            f"| {target} | {img_s:.0f} | {tflops:.1f} | {tflops / args.peak_tflops:.3f} | "
            f"{runs[0]['loader_img_s']:.0f} | {runs[0]['mem_gib']:.1f} |"
        )
    ratio = statistics.median(r["img_s"] for r in res["pixels"]) / statistics.median(r["img_s"] for r in res["tokens"])
    print(f"K-MIM step / MAE step = {ratio:.3f} (time per image ratio)")
    if args.profile and torch.cuda.is_available():
        profile_busy(args)


if __name__ == "__main__":
    main()
