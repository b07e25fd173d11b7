"""Wall time of the evaluation on mnist5k (4,000 train + 1,000 test images) with a mnist-tiny encoder: feature
extraction, kNN, the linear probe's lr sweep and final fit, and `evaluate_encoder` as the demo calls it.

    python benchmarks/bench_eval.py [--threads 2]

The probe and kNN run on features extracted once (cached tensors): the sweep's cost is head training only. kNN is
one (queries x bank) matmul per chunk of 1,024 test images, i.e. one for the 1,000 test images here.
"""

from __future__ import annotations

import argparse
import time

import torch

from kmim.config import load_config
from kmim.engine.probe import train_linear_probe
from kmim.eval import evaluate_encoder, random_encoder, split_features
from kmim.eval.knn import top1, weighted_knn_predict
from kmim.eval.probe import linear_probe, probe_recipe


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = load_config()
    e = cfg.eval
    enc = random_encoder(cfg, 0)  # the demo's architecture; timing does not depend on the weights
    ((trf, try_), (tef, tey), n_cls), t_feat = timed(lambda: split_features(enc, cfg, progress=False))
    tr, te = trf[e.pool], tef[e.pool]
    knn, t_knn = timed(
        lambda: top1(
            weighted_knn_predict(tr, try_, te, num_classes=n_cls, k=e.knn.k, temperature=e.knn.temperature), tey
        )
    )
    _, t_head = timed(lambda: train_linear_probe(tr, try_, n_cls, lr=e.linear.lrs[0], **probe_recipe(e, 0)))
    probe, t_probe = timed(
        lambda: linear_probe(
            tr, try_, te, test_labels=tey, num_classes=n_cls, lrs=list(e.linear.lrs), **probe_recipe(e, 0)
        )
    )
    _, t_all = timed(lambda: evaluate_encoder(enc, cfg, progress=False))
    print(
        f"{a.threads} threads; {len(try_):,} train + {len(tey):,} test images; probe: {len(e.linear.lrs)} lrs x "
        f"{e.linear.epochs} epochs + a final fit"
    )
    print("| part | s |")
    print("|---|---:|")
    print(f"| features, train + test (both pools, one pass) | {t_feat:.2f} |")
    print(f"| kNN (k={e.knn.k}), one pool | {t_knn:.3f} |")
    print(f"| one probe head ({e.linear.epochs} epochs on cached features) | {t_head:.2f} |")
    print(f"| linear probe: lr sweep + final fit, one pool | {t_probe:.2f} |")
    print(f"| evaluate_encoder (features + kNN + probe, 2 pools), as the demo runs it | {t_all:.2f} |")
    print(f"(random-init encoder: kNN {knn:.1f}, probe {probe['top1']:.1f})")


if __name__ == "__main__":
    main()
