"""`kmim show-tokens`: a PNG grid of images, each shown above its token map (every patch coloured by its token id),
so a person can see what a tokenizer's tokens capture. The same id has the same colour in every image.

Images are drawn from the chosen split (test by default: images the tokenizer was not fitted on), about evenly over
the classes, in a seeded order. Heavy imports happen inside `run`, so building the CLI parser stays cheap.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, cast

from kmim.commands.tcas import Entry, add_data_arguments, base_config, build_tokenizer
from kmim.errors import KmimError
from kmim.paths import check_writable

GOLDEN = 0.6180339887498949


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `kmim show-tokens`: exactly one --tokenizer SPEC or --file PATH."""
    p.add_argument("--out", required=True, metavar="PNG", help="image file to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("-n", "--images", type=int, default=16, help="number of images (default 16)")
    p.add_argument("--cols", type=int, default=8, help="images per row (default 8)")
    p.add_argument("--split", choices=("train", "test"), default="test", help="split to draw images from (test)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image choice (default 0)")
    p.add_argument("--ids", action="store_true", help="also print the token id in every patch")
    add_data_arguments(p)


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


def run(args: argparse.Namespace) -> int:
    import torch

    from kmim.data import build_dataset
    from kmim.engine.dist import resolve_device
    from kmim.fit import training_split

    if len(args.tokenizer) + len(args.file) != 1:
        raise KmimError("show-tokens draws one tokenizer: pass exactly one --tokenizer SPEC or --file PATH")
    if args.images < 1 or args.cols < 1:
        raise KmimError(f"--images={args.images} and --cols={args.cols} must be at least 1")
    check_writable(args.out, args.overwrite)
    cfg = base_config(args)
    data = training_split(cfg)
    info = data.info
    entry = (
        Entry(args.tokenizer[0], spec=args.tokenizer[0]) if args.tokenizer else Entry(args.file[0], file=args.file[0])
    )
    tok = build_tokenizer(entry, cfg, data, progress=not args.quiet).eval()
    ds = data.ds if args.split == "train" else build_dataset(cfg.data, "test", min_side=data.patch_size)[0]
    idx = pick_images(ds, args.images, len(info.classes), seed=args.seed)
    imgs = torch.stack([ds[i][0] for i in idx])  # (N, C, H, W)
    labels = torch.tensor([int(ds[i][1]) for i in idx])
    device = resolve_device(args.device, "--device")
    tok.to(device)
    with torch.no_grad():
        y = labels.to(device) if tok.needs_labels else None
        tokens = tok.encode(imgs.to(device), y).cpu().numpy()  # (N, P)
    titles = [f"{info.classes[int(y)]}" for y in labels]
    head = f"{entry.label} (K={tok.k}) on {cfg.data.name} {args.split}: image above, token ids as colours below"
    render_token_grid(
        imgs,
        tokens,
        titles,
        patch_size=tok.patch_size,
        k=tok.k,
        mean=info.mean,
        std=info.std,
        path=args.out,
        cols=args.cols,
        ids=args.ids,
        title=head,
    )
    print(f"wrote {args.out}: {len(idx)} images, {len(set(tokens.reshape(-1).tolist()))} distinct tokens shown")
    return 0
