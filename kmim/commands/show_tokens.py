"""`kmim show-tokens`: a PNG grid of images, each shown above its token map (every patch coloured by its token id),
so a person can see what a tokenizer's tokens capture. The same id has the same colour in every image.

Images are drawn from the chosen split (test by default: images the tokenizer was not fitted on), about evenly over
the classes, in a seeded order. Heavy imports happen inside `run`, so building the CLI parser stays cheap.
"""

from __future__ import annotations

import argparse

from kmim.commands.tcas import Entry, add_data_arguments, base_config, build_tokenizer
from kmim.errors import KmimError
from kmim.paths import check_writable
from kmim.studies.token_maps import pick_images, render_token_grid

__all__ = ["add_arguments", "pick_images", "run"]


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


def run(args: argparse.Namespace) -> int:
    import torch

    from kmim.data import build_dataset
    from kmim.dist import resolve_device
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
