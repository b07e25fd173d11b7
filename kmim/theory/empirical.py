"""An empirical mask graph from mnist5k: images as unmasked views, single masked patches as masked views.

Construction (docs/theory.md, "The empirical graph"): images are padded 28 -> 32 with background 0, scaled to [0, 1],
normalized with mean 0.1307 / std 0.3081 and cut into L = 64 patches of 4 x 4. Under uniform random masking every
patch of an image is equally likely to be a hidden one, so with one node per image (its visible part summarized by
the image) and one node per masked patch,

    M(image i, x2) = (1 / n) * (number of the L patches of image i that are x2) / L.

MAE's identity target makes two masked patches equal only when their pixels are equal (in MNIST, the all-background
patch is shared by every image: the intersection of all the P_c). A tokenizer merges masked patches by token, so the
tokenized graph is M(i, S) = (1/n) * (share of image i's patches with token S): the bag-of-tokens histogram.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from kmim.data.mnist5k import load_mnist5k
from kmim.errors import KmimError
from kmim.fit.kmeans import fit_kmeans
from kmim.tokenizers.codebook import assign
from kmim.tokenizers.patches import patchify

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
PAD, PATCH = 2, 4  # 28 + 2 * 2 = 32 pixels, 8 x 8 patches of 4 x 4


@dataclass(frozen=True)
class EmpiricalGraph:
    """Patch tokens of a subsample of mnist5k under several tokenizers, ready for graph quantities or TCAS."""

    labels: np.ndarray  # (n,) class of each image (unmasked view)
    patch_tokens: dict[str, np.ndarray]  # tokenizer name -> (n, L) token id of every patch
    ink: np.ndarray  # (n, L) True where the patch is not pure background


def mnist_patches(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Normalized 4 x 4 patches (N, 64, 16) float32 and labels (N,) of an mnist5k split."""
    imgs, labels = load_mnist5k(split)  # (N, 28, 28) uint8
    x = np.pad(imgs, ((0, 0), (PAD, PAD), (PAD, PAD))).astype(np.float32) / 255.0  # (N, 32, 32)
    x = (x - MNIST_MEAN) / MNIST_STD
    return patchify(torch.from_numpy(x)[:, None], PATCH).numpy(), labels  # (N, 64, 16)


def balanced_subsample(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of `per_class` images of every class, drawn without replacement."""
    rng = np.random.default_rng(seed)
    idx = []
    for c in np.unique(labels):
        pool = np.flatnonzero(labels == c)
        if len(pool) < per_class:
            raise KmimError(f"--empirical-per-class={per_class}: class {c} has only {len(pool)} training images")
        idx.append(rng.choice(pool, size=per_class, replace=False))
    return np.sort(np.concatenate(idx))


def content_ids(patches: np.ndarray) -> np.ndarray:
    """Identity (MAE) tokens: equal ids exactly for patches with equal pixels; (n, L, D) -> (n, L)."""
    n, L, d = patches.shape
    _, inv = np.unique(patches.reshape(n * L, d), axis=0, return_inverse=True)
    return inv.reshape(n, L)


def kmeans_ids(train: np.ndarray, patches: np.ndarray, k: int, *, seed: int) -> np.ndarray:
    """Pixel K-means tokens: fit on the training patches (N, L, D), assign `patches` (n, L, D) -> (n, L)."""
    res = fit_kmeans(train.reshape(-1, train.shape[-1]), k, niter=20, seed=seed, progress=False)
    n, L, d = patches.shape
    ids = assign(torch.from_numpy(patches.reshape(n * L, d)), torch.from_numpy(res.centroids))
    return ids.numpy().reshape(n, L)


def bag_of_tokens_graph(patch_tokens: np.ndarray, keep: np.ndarray | None = None) -> sp.csr_matrix:
    """Tokenized mask graph (n, S): M(i, S) = share of image i's kept patches with token S, divided by n.

    `patch_tokens` (n, L) are non-negative ids; `keep` (n, L) selects the patches that can be masked (all by default).
    Columns are the token ids 0..max; empty ones are dropped later by `tokenized_mask_graph`.
    """
    n, L = patch_tokens.shape
    keep = np.ones((n, L), dtype=bool) if keep is None else keep
    per_img = keep.sum(axis=1)  # (n,)
    if np.any(per_img == 0):
        raise KmimError("an image has no patch left to mask: keep at least one patch per image")
    rows = np.repeat(np.arange(n), L)[keep.ravel()]
    w = (1.0 / (n * per_img))[rows]
    return sp.csr_matrix((w, (rows, patch_tokens.ravel()[keep.ravel()])), shape=(n, int(patch_tokens.max()) + 1))


def build_empirical(per_class: int, ks: list[int], seed: int) -> EmpiricalGraph:
    """Patches of `per_class` training images per class, tokenized by identity, pixel K-means for each K in `ks`
    (fitted on all training patches), class-wise (token = image label), class x K-means (label and K-means id of
    the largest K) and a uniformly random assignment to as many tokens as the largest K."""
    train, labels = mnist_patches("train")  # (N, 64, 16), (N,)
    idx = balanced_subsample(labels, per_class, seed)
    patches, y = train[idx], labels[idx]  # (n, 64, 16), (n,)
    n, L, _ = patches.shape
    bg = (0.0 - MNIST_MEAN) / MNIST_STD
    tokens = {"identity": content_ids(patches)}
    for k in ks:
        tokens[f"kmeans-{k}"] = kmeans_ids(train, patches, k, seed=seed)
    tokens["class-wise"] = np.repeat(y[:, None], L, axis=1)
    if ks:
        kmax = max(ks)
        tokens[f"class x kmeans-{kmax}"] = y[:, None] * kmax + tokens[f"kmeans-{kmax}"]
        tokens[f"random-{kmax}"] = np.random.default_rng(seed).integers(0, kmax, size=(n, L))
    ink = np.any(np.abs(patches - bg) > 1e-6, axis=2)  # (n, L)
    return EmpiricalGraph(y, tokens, ink)
