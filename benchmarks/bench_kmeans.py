"""kmim's K-means fit vs the paper code's recipe (scikit-learn MiniBatchKMeans.partial_fit, 100 passes over every
patch, batches of 128 images' patches), on the same patch sets, in one process.

    python benchmarks/bench_kmeans.py [--sets mnist5k,in-like] [--ks 50,100,1000] [--passes 3] [--threads 2]
    python benchmarks/bench_kmeans.py --sweep [--sets ...] [--ks ...]      # inertia vs sample size, 3 seeds

Sets: `mnist5k` = every 4x4 patch of the 4,000 mnist5k training images (256,000 x 16); `in-like` = 200,000 x 768
patches shaped like ImageNet 16x16x3 patches: seeded random 28x28 crops of mnist5k images, upsampled to 224 px,
tinted with a seeded random colour per image, plus a little noise, then patchified (196 patches per image).

For each K it prints wall time and inertia (mean squared distance of ALL patches of the set to their nearest
centroid) of: kmim's fit with the shipped defaults (faiss Lloyd, 20 iterations, k-means++ seeding, a seeded sample
of at most 256 * K patches); the same fit on every patch (what subsampling costs); and the recipe. The recipe runs
`--passes` passes (all 100 with `--passes 100`); its 100-pass time is extrapolated as first pass + 99 x the mean of
the later passes, and its inertia is the one after the passes that ran (the line says how many).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import MiniBatchKMeans

from kmim.config import DataConfig, TokenizerConfig
from kmim.data import build_dataset, stack_dataset
from kmim.fit.kmeans import fit_kmeans
from kmim.tokenizers.codebook import assign
from kmim.tokenizers.patches import patchify

RECIPE_PASSES = 100
RECIPE_IMAGES_PER_BATCH = 128


def mnist_images() -> torch.Tensor:
    ds, _ = build_dataset(DataConfig(name="mnist5k"), "train")
    return stack_dataset(ds)[0]  # (4000, 1, 32, 32), normalised


def mnist_patches() -> tuple[np.ndarray, int]:
    return patchify(mnist_images(), 4).flatten(0, 1).numpy(), 64  # (256000, 16), patches per image


def in_like_patches(n: int = 200_000, seed: int = 0) -> tuple[np.ndarray, int]:
    imgs = mnist_images()
    g = torch.Generator().manual_seed(seed)
    n_img = -(-n // 196)
    out = []
    for s in range(0, n_img, 64):
        b = min(64, n_img - s)
        idx = torch.randint(len(imgs), (b,), generator=g)
        r, c = torch.randint(5, (2, b), generator=g)
        crops = torch.stack([imgs[i, :, y : y + 28, x : x + 28] for i, y, x in zip(idx, r, c, strict=True)])
        big = F.interpolate(crops, size=224, mode="bilinear", align_corners=False)  # (b, 1, 224, 224)
        tint = torch.randn(b, 3, 1, 1, generator=g) * 0.5 + 1.0
        shift = torch.randn(b, 3, 1, 1, generator=g) * 0.3
        rgb = big * tint + shift + 0.05 * torch.randn(b, 3, 224, 224, generator=g)
        out.append(patchify(rgb, 16).flatten(0, 1))  # (b * 196, 768)
    return torch.cat(out)[:n].numpy().astype(np.float32), 196


def inertia(x: np.ndarray, c: np.ndarray) -> float:
    xt, ct = torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(c, dtype=np.float32))
    total = 0.0
    for s in range(0, len(xt), 65536):
        xs = xt[s : s + 65536]
        total += float(((xs - ct[assign(xs, ct)]) ** 2).sum())
    return total / len(xt)


def kmim_fit(x: np.ndarray, k: int, ppc: int) -> tuple[float, np.ndarray, int]:
    d = TokenizerConfig()
    t0 = time.perf_counter()
    res = fit_kmeans(x, k, d.niter, seed=d.seed, max_points_per_centroid=ppc, init=d.init, progress=False)
    return time.perf_counter() - t0, res.centroids, res.n_fit


def recipe(x: np.ndarray, k: int, per_img: int, passes: int) -> tuple[float, float, np.ndarray]:
    """Seconds of the first pass, mean seconds of a later pass, centroids after `passes` passes."""
    bs = RECIPE_IMAGES_PER_BATCH * per_img
    km = MiniBatchKMeans(n_clusters=k, random_state=0, batch_size=bs, n_init="auto")
    times = []
    for _ in range(passes):
        t0 = time.perf_counter()
        for s in range(0, len(x), bs):
            km.partial_fit(x[s : s + bs])
        times.append(time.perf_counter() - t0)
    later = float(np.mean(times[1:])) if passes > 1 else times[0]
    return times[0], later, km.cluster_centers_


def bench(name: str, x: np.ndarray, per_img: int, ks: list[int], passes: int) -> None:
    print(f"\n{name}: {x.shape[0]:,} patches of dim {x.shape[1]}; inertia over all of them", flush=True)
    print(
        "| K | kmim fit (s) | fit points | inertia | all-patch fit (s) | inertia | recipe 100 passes (s) | "
        "inertia (passes run) | recipe / kmim time | kmim / recipe inertia |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k in ks:
        t_k, c_k, n_fit = kmim_fit(x, k, TokenizerConfig().max_points_per_centroid)
        i_k = inertia(x, c_k)
        if n_fit < len(x):
            t_all, c_all, _ = kmim_fit(x, k, -(-len(x) // k))
            all_cells = f"{t_all:.1f} | {inertia(x, c_all):.4f}"
        else:
            all_cells = "= kmim | = kmim"
        first, later, c_r = recipe(x, k, per_img, passes)
        t_r = first + (RECIPE_PASSES - 1) * later
        i_r = inertia(x, c_r)
        print(
            f"| {k} | {t_k:.2f} | {n_fit:,} | {i_k:.4f} | {all_cells} | {t_r:.0f}"
            f"{'' if passes == RECIPE_PASSES else ' (extrapolated)'} | {i_r:.4f} ({passes}) | {t_r / t_k:.0f}x | "
            f"{i_k / i_r:.4f} |",
            flush=True,
        )


SWEEP_PPC = (64, 256, 1024, 0)  # points per centroid of the fit sample; 0 = every patch
SWEEP_SEEDS = (0, 1, 2)


def sweep(name: str, x: np.ndarray, ks: list[int]) -> None:
    """Inertia over all patches vs the fit sample's size, over seeds: what subsampling costs, beside seed noise."""
    d = TokenizerConfig()
    print(
        f"\n{name}: {x.shape[0]:,} x {x.shape[1]}; inertia over all patches, mean ± sd over seeds "
        f"{SWEEP_SEEDS} (the seed draws the sample and the k-means++ start)",
        flush=True,
    )
    print("| K | points per centroid | fit points | fit s (mean) | inertia | vs every-patch fit |")
    print("|---:|---:|---:|---:|---:|---:|")
    for k in ks:
        rows = []
        for ppc in SWEEP_PPC:
            ppc_eff = ppc or -(-len(x) // k)
            res = []
            for seed in SWEEP_SEEDS:
                t0 = time.perf_counter()
                r = fit_kmeans(x, k, d.niter, seed=seed, max_points_per_centroid=ppc_eff, init=d.init, progress=False)
                res.append((time.perf_counter() - t0, inertia(x, r.centroids), r.n_fit))
            rows.append((ppc, res))
        ref = float(np.mean([i for _, i, _ in rows[-1][1]]))
        for ppc, res in rows:
            ins = [i for _, i, _ in res]
            print(
                f"| {k} | {ppc or 'all'} | {res[0][2]:,} | {np.mean([t for t, _, _ in res]):.2f} | "
                f"{np.mean(ins):.4f} ± {np.std(ins, ddof=1):.4f} | {100 * (np.mean(ins) / ref - 1):+.1f} % |",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default="mnist5k,in-like")
    ap.add_argument("--ks", default="50,100,1000")
    ap.add_argument("--passes", type=int, default=3, help="recipe passes actually run (100 = the whole recipe)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sweep", action="store_true", help="inertia vs fit-sample size over 3 seeds instead")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ks = [int(k) for k in a.ks.split(",")]
    makers = {"mnist5k": mnist_patches, "in-like": in_like_patches}
    for name in a.sets.split(","):
        x, per_img = makers[name]()
        if a.sweep:
            sweep(name, x, ks)
        else:
            bench(name, x, per_img, ks, a.passes)


if __name__ == "__main__":
    main()
