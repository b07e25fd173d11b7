"""faiss K-means (kmim's fit) vs scikit-learn MiniBatchKMeans (the paper code's choice) on mnist5k pixel patches.

    python benchmarks/bench_kmeans.py [--k 200] [--threads 2]

Both fit the same seeded sample of 4x4 patches (K * 256 points, faiss's points-per-centroid rule); inertia is the
mean squared distance of ALL training patches to their nearest centroid, so the quality numbers are comparable.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from kmim.tokenizers.pixel import sample_patches
from sklearn.cluster import MiniBatchKMeans

from kmim.config import load_config
from kmim.data import build_dataset
from kmim.fit.kmeans import fit_kmeans
from kmim.tokenizers.codebook import assign
from kmim.tokenizers.patches import patchify


def inertia(x: np.ndarray, c: np.ndarray) -> float:
    xt, ct = torch.from_numpy(x), torch.from_numpy(c.astype(np.float32))
    ids = assign(xt, ct)
    return float(((xt - ct[ids]) ** 2).sum(1).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = load_config()
    ds, _ = build_dataset(cfg.data, "train")
    every = sample_patches(ds, lambda im: patchify(im, 4), cap=10**9, seed=0, progress=False)  # all patches
    sample = every[np.random.default_rng(0).choice(len(every), a.k * 256, replace=False)]
    t0 = time.perf_counter()
    res = fit_kmeans(sample, a.k, niter=20, seed=0, progress=False)
    t_faiss = time.perf_counter() - t0
    t0 = time.perf_counter()
    mbk = MiniBatchKMeans(a.k, random_state=0, batch_size=256 * 64, n_init="auto", max_iter=20).fit(sample)
    t_sk = time.perf_counter() - t0
    print(f"K={a.k}, {len(sample):,} fit points of dim {sample.shape[1]}, inertia over all {len(every):,} patches")
    print(f"  faiss (kmeans++ init, 20 iter):        {t_faiss:6.2f} s  inertia {inertia(every, res.centroids):.4f}")
    print(f"  sklearn MiniBatchKMeans (20 epochs):   {t_sk:6.2f} s  inertia {inertia(every, mbk.cluster_centers_):.4f}")
    print(f"  speed ratio sklearn / faiss: {t_sk / t_faiss:.1f}x")


if __name__ == "__main__":
    main()
