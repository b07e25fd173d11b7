"""Is the data loader the bottleneck? Loader images/s (the training DataLoader alone: decode, augment, per-sample
seeds, collate) beside training-step images/s (batches already in memory) for the same config, in one process.

    python benchmarks/bench_loader.py [--batches 20] [--workers 0] [--threads 2] [--device auto]

Cases: mnist5k with the demo's config, and an ImageFolder of 224-px JPEGs (written to a temp folder) with the
IN-100 ViT-S/16 preset. A ratio loader/step above 1 means the loader keeps up.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kmim.config import load_config
from kmim.engine.plan import resolve_plan
from kmim.engine.pretrain import Pretrainer
from kmim.fit import prepare_tokenizer


def jpeg_folder(root: Path, per_class: int = 48, classes: int = 4, side: int = 256) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class if split == "train" else 2):
                base = rng.integers(0, 255, (side // 8, side // 8, 3), dtype=np.uint8)
                img = Image.fromarray(base).resize((side, side), Image.BICUBIC)  # smooth content, like photos
                img.save(d / f"{i}.jpg", quality=90)
    return root


def measure(cfg_path: str | None, overrides: list[str], batches: int, label: str) -> None:
    cfg = load_config(cfg_path, overrides)
    tok = prepare_tokenizer(cfg, progress=False)
    with tempfile.TemporaryDirectory() as d:
        trainer = Pretrainer(resolve_plan(cfg, "train"), Path(d), tok, progress=False)
        trainer.sampler.set_epoch(0)
        it, got, t0 = iter(trainer.loader), [], time.perf_counter()
        for _ in range(min(batches, len(trainer.sampler))):
            got.append(next(it))
        load_s = time.perf_counter() - t0
        n = sum(b[0].shape[0] for b in got)
        trainer.model.train()
        t0 = time.perf_counter()
        for b in got:
            loss, _ = trainer._micro_step(b)
            loss.backward()
            trainer.opt.step()
            trainer.opt.zero_grad(set_to_none=True)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        step_s = time.perf_counter() - t0
    workers = cfg.data.num_workers
    print(
        f"{label:34s} workers={workers}  loader {n / load_s:8.1f} img/s   step {n / step_s:8.1f} img/s   "
        f"loader/step {step_s / load_s:6.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    common = [f"data.num_workers={a.workers}", f"run.device={a.device}", "tokenizer.device=" + a.device]
    measure(None, [*common, "tokenizer.k=200"], a.batches, "mnist5k, mnist-tiny, batch 128")
    with tempfile.TemporaryDirectory() as d:
        root = jpeg_folder(Path(d))
        extra = [f"data.root={root}", "train.batch_size=32", "tokenizer.max_points_per_centroid=64"]
        measure("configs/in100_vits16_kmim.yaml", [*common, *extra], max(2, a.batches // 4), "JPEG 224 px, vit-s16")


if __name__ == "__main__":
    main()
