"""Step time of online clustering targets (CAPI-style) against K-MIM PIXEL and MAE, interleaved in one process.

    python benchmarks/bench_online.py [--preset mnist-tiny|vit-s16|vit-b16] [--batch 128] [--steps 20] [--k 200]

A step is what `Pretrainer` runs per optimizer step: targets (the tokenizer's encode; for online targets the EMA
teacher's forward on the full view, the prototypes and Sinkhorn-Knopp), the student's forward and loss, backward,
AdamW and (online) the teacher's EMA update. Each variant is a real `Pretrainer` on the same batch; step i runs every
variant once, so machine load hits them alike; medians are reported with the ratio to K-MIM PIXEL, and the teacher's
forward alone. mnist-tiny runs on mnist5k (32 px); vit-s16 / vit-b16 on synthetic 224 px images (1 channel).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kmim.config import load_config
from kmim.engine.plan import resolve_plan
from kmim.engine.pretrain import Pretrainer
from kmim.fit import prepare_tokenizer

VARIANTS = {"kmim-pixels": "tokens", "online-clusters": "online-clusters", "mae-normpix": "pixels"}


def config(args: argparse.Namespace, target: str):
    data = (
        ["data.name=mnist5k"]
        if args.preset == "mnist-tiny"
        else [
            "data.name=synthetic",
            "data.img_size=224",
            "data.synthetic_classes=2",
            "data.aug=none",
            f"data.synthetic_per_class={args.batch}",
        ]
    )
    over = [
        *data,
        f"model.preset={args.preset}",
        f"tokenizer.k={args.k}",
        "tokenizer.niter=5",
        "tokenizer.fit_images=256",
        f"train.target={target}",
        f"train.batch_size={args.batch}",
        "train.warmup_epochs=0",
        "run.tensorboard=false",
        f"run.device={args.device}",
    ]
    return load_config(None, over)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_step(trainer: Pretrainer, batch: tuple[torch.Tensor, ...]):
    def step() -> float:
        sync(trainer.device)
        t0 = time.perf_counter()
        loss, _ = trainer._micro_step(batch)
        loss.backward()
        trainer._before_step()
        trainer.opt.step()
        trainer.opt.zero_grad(set_to_none=True)
        trainer._on_step(trainer.state.step + 1)
        sync(trainer.device)
        return time.perf_counter() - t0

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=("mnist-tiny", "vit-s16", "vit-b16"), default="mnist-tiny")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--k", type=int, default=200, help="K of the pixel tokenizer and the number of prototypes")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    steps, trainers = {}, {}
    with tempfile.TemporaryDirectory() as d:
        for name, target in VARIANTS.items():
            cfg = config(args, target)
            tr = Pretrainer(
                resolve_plan(cfg, "train"), Path(d) / name, prepare_tokenizer(cfg, progress=False), progress=False
            )
            tr.sampler.set_epoch(0)
            batch = tuple(x.to(tr.device) for x in next(iter(tr.loader)))
            trainers[name], steps[name] = tr, make_step(tr, batch)
        times: dict[str, list[float]] = {n: [] for n in VARIANTS}
        for i in range(args.steps + 2):
            for name, step in steps.items():
                dt = step()
                if i >= 2:  # two warm-up rounds
                    times[name].append(dt)
        online = trainers["online-clusters"]
        imgs = next(iter(online.loader))[0].to(online.device)
        teacher = []
        for _ in range(args.steps):
            sync(online.device)
            t0 = time.perf_counter()
            assert online.online is not None
            online.online.features(imgs)
            sync(online.device)
            teacher.append(time.perf_counter() - t0)
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    print(
        f"{dev}, {torch.get_num_threads()} threads; {args.preset}, batch {args.batch}, K = {args.k}, "
        f"{args.steps} steps per variant (medians)"
    )
    base = statistics.median(times["kmim-pixels"])
    print("| variant | step ms | / K-MIM PIXEL |\n|---|---:|---:|")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"| {name} | {1000 * m:.1f} | {m / base:.2f} |")
    print(f"teacher forward alone (full view): {1000 * statistics.median(teacher):.1f} ms")


if __name__ == "__main__":
    main()
