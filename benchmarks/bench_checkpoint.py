"""What one pretraining checkpoint costs at a preset's model size: the parts of `save_checkpoint`, timed apart.

    python benchmarks/bench_checkpoint.py [--preset vit-b16] [--k 50] [--dir DIR] [--repeats 3] [--device cuda]

Builds the preset's masked image model (224 px, 3 channels, K output ids) and an AdamW state for every parameter
(as after the first step), then times, per repeat: the checkpoint state (state_dicts of model and optimizer), its
sha256 content digest, and the durable write (torch.save to a temp file, fsync, rename) into DIR. Rank 0 writes
last.pt once per epoch (and a numbered file every save_every epochs), while the other ranks wait at the next
collective, so epoch time on N GPUs grows by about this much. With --device cuda the model and optimizer live on
the GPU, as in training, and the digest and the write include the copies to the host. Prints medians in seconds
and the size in GB.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kmim.config import ModelConfig
from kmim.digest import content_digest
from kmim.engine.checkpoint import save_checkpoint
from kmim.engine.optim import build_optimizer
from kmim.models import build_mim, resolve_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="vit-b16")
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--dir", default=None, help="where to write (default: a temp folder)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    model = build_mim(resolve_spec(ModelConfig(preset=args.preset)), 224, 3, out_dim=args.k).to(args.device)
    opt = build_optimizer(model, 1e-4, 0.05)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # the AdamW moments exist, as after the first step
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values()) * 3 / 1e9
    times: dict[str, list[float]] = {"state": [], "digest": [], "save (digest + write + fsync)": []}
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
            t1 = time.perf_counter()
            content_digest(state)
            t2 = time.perf_counter()
            save_checkpoint(Path(d) / "last.pt", state)
            t3 = time.perf_counter()
            times["state"].append(t1 - t0)
            times["digest"].append(t2 - t1)
            times["save (digest + write + fsync)"].append(t3 - t2)
    n = sum(p.numel() for p in model.parameters())
    print(f"{args.preset} MIM, K={args.k}: {n / 1e6:.1f} M parameters, checkpoint about {size:.2f} GB (model + AdamW)")
    for name, ts in times.items():
        print(f"  {name:32s} {statistics.median(ts):6.2f} s (median of {len(ts)})")
    print(f"  {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}")


if __name__ == "__main__":
    main()
