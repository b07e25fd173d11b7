"""Token maps as pictures: images, each above its token map (every patch coloured by its token id; the same id has
the same colour in every image), for `kmim show-tokens` and the demo's report."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, cast

GOLDEN = 0.6180339887498949


def token_palette(k: int) -> Any:
    """(K, 3) RGB in [0, 1]: tab20 for K <= 20, else hues spaced by the golden ratio with alternating lightness."""
    import matplotlib
    import numpy as np

    if k <= 20:
        return np.asarray(cast("matplotlib.colors.ListedColormap", matplotlib.colormaps["tab20"]).colors)[:k]
    i = np.arange(k)
    hsv = np.stack([(i * GOLDEN) % 1.0, 0.55 + 0.4 * ((i * 7) % 3) / 2, 0.6 + 0.4 * ((i * 5) % 4) / 3], axis=1)
    return matplotlib.colors.hsv_to_rgb(hsv)


def _display(img: Any, mean: tuple[float, ...], std: tuple[float, ...]) -> Any:
    """Normalized (C, H, W) -> displayable (H, W) or (H, W, 3) in [0, 1]."""
    import numpy as np

    x = img.numpy() * np.asarray(std)[:, None, None] + np.asarray(mean)[:, None, None]
    x = np.clip(x, 0.0, 1.0)
    return x[0] if x.shape[0] == 1 else x[:3].transpose(1, 2, 0)


def render_token_grid(
    imgs: Any,
    tokens: Any,
    titles: list[str],
    *,
    patch_size: int,
    k: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    path: str | Path,
    cols: int = 8,
    ids: bool = False,
    title: str = "",
) -> None:
    """Write a PNG: for every image (N, C, H, W), the image and below it its tokens (N, P) as coloured patches."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kmim.runinfo import atomic_write

    n, _, h, w = imgs.shape
    gh, gw = h // patch_size, w // patch_size
    pal = token_palette(k)
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(2 * rows, cols, figsize=(1.6 * cols, 3.3 * rows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        r, c = 2 * (i // cols), i % cols
        shown = _display(imgs[i], mean, std)
        axes[r, c].imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1)
        axes[r, c].set_title(titles[i], fontsize=8)
        grid = tokens[i].reshape(gh, gw)  # (gh, gw)
        axes[r + 1, c].imshow(pal[grid], interpolation="nearest")
        if ids and gh * gw <= 256:
            for (y, x), t in zip(((y, x) for y in range(gh) for x in range(gw)), grid.reshape(-1), strict=True):
                axes[r + 1, c].text(x, y, str(int(t)), ha="center", va="center", fontsize=4)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def pick_images(ds: Any, n: int, num_classes: int, *, seed: int) -> list[int]:
    """Indices of n images in a seeded order, at most ceil(n / L) per class, so classes are about even."""
    import torch

    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed)).tolist()
    quota, taken, out = math.ceil(n / num_classes), [0] * num_classes, []
    for i in order:
        y = int(ds[i][1])
        if taken[y] < quota:
            taken[y] += 1
            out.append(i)
            if len(out) == n:
                break
    return out
