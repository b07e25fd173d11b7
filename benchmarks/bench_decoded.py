"""The pretraining loader's cost per image on Imagenette, one core, side by side in one process (issue 27):
decoding the JPEGs (full size and a `kmim prepare --short-side 72` copy) against `data.cache=ram`, with kmim's
per-sample seeding (torch only, as pretraining now seeds; and with Python's and NumPy's RNGs too, as before) and
without any seeding (the augmentation alone).

    python benchmarks/bench_decoded.py --full /data/imagenette224 --small /data/imagenette-72 [--images 2000]

Each line is img/s of the per-sample path (dataset item: view, label and mask noise), single process, one thread,
the best of ROUNDS interleaved passes; ratios are against the JPEG path of the same folder with the same seeding.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from kmim.config import DataConfig
from kmim.data import build_dataset
from kmim.data.sampling import SeededViews

ROUNDS = 3  # each rate is the best of this many passes, the variants interleaved (this VM's timings wander)


def _rate(get: Any, n: int) -> float:
    get(0)  # warm up
    t = time.perf_counter()
    for i in range(n):
        get(i)
    return n / (time.perf_counter() - t)


def _best_rates(getters: dict[str, Any], n: int) -> dict[str, float]:
    best = dict.fromkeys(getters, 0.0)
    for _ in range(ROUNDS):
        for kind, get in getters.items():
            best[kind] = max(best[kind], _rate(get, n))
    return best


def _cfg(root: str, cache: str) -> DataConfig:
    return DataConfig(name="imagenette", root=root, img_size=64, aug="rrc", hflip=True, cache=cache)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", required=True, help="Imagenette folder at full size (224 px here)")
    p.add_argument("--small", required=True, help="its 72-px kmim prepare copy")
    p.add_argument("--images", type=int, default=2000)
    args = p.parse_args()
    torch.set_num_threads(1)
    n = args.images
    rows = []
    for label, root in (("224-px JPEG", args.full), ("72-px JPEG", args.small)):
        for cache in ("none", "ram"):
            t0 = time.perf_counter()
            ds, _ = build_dataset(_cfg(root, cache), "train", train=True, min_side=8)
            setup = time.perf_counter() - t0
            torch_only = SeededViews(ds, 0, 64, python_rngs=False)
            full = SeededViews(ds, 0, 64)
            getters = {
                "seeded (torch)": lambda i, v=torch_only: v[(i, 0)],
                "seeded (torch+py+np)": lambda i, v=full: v[(i, 0)],
                "unseeded": lambda i, d=ds: d[i],
            }
            rates = _best_rates(getters, n)
            rows.append((label, cache, setup, rates))
    print(f"{n} images each, one process, one thread, RandomResizedCrop-64 + flip, uint8 out")
    base: dict[tuple[str, str], float] = {}
    for label, cache, setup, rates in rows:
        for kind, r in rates.items():
            key = (label, kind)
            base.setdefault(key, r)
            print(
                f"{label:12s} cache={cache:4s} {kind:22s} {r:8.0f} img/s  x{r / base[key]:.2f} vs JPEG"
                f"  (setup {setup:.1f} s)"
            )


if __name__ == "__main__":
    main()
