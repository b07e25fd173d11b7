"""Rehearse the paper's IN-100 job on an ImageNet-shaped JPEG folder with the real presets, and project it to
ImageNet-100 / ImageNet-1k on 1 and 8 GPUs.

    python benchmarks/rehearse_imagenet.py [--quick] [--root DIR] [--inertia] [--cores-per-gpu 12]

1. Writes (once, reproducibly from --seed) an ImageFolder of >= 100 classes whose JPEGs follow ImageNet's shape: 70 %
   of them 500 px on the long side at 4:3 / 3:4 / 3:2 / 1:1, the rest 200-1000 px; textured content so that files
   average ~100 KB at quality 90 (ImageNet: ~110 KB).
2. Measures per core (one process, one thread, no workers) the images/s of each view the stages decode: the eval
   view (tokenizer fit, kNN), the pretraining view (RRC), the LARS view, the fine-tuning view (RandAugment), on the
   original files and on a `kmim prepare` copy (short side 256).
3. Runs the IN-100 pipeline with the real presets, overriding only epochs, batch sizes, image counts and workers:
   tokenize (1 process, then torchrun 2: the files must be equal), pretrain (torchrun 2), pretrain again preempted
   by SIGUSR1 mid-epoch (exit 75) and continued by the same command line, knn, the LARS probe (torchrun 2),
   finetune (torchrun 2); wall time (startup included) and images/s per process of each. On a 1-GPU
   machine run it with `--nproc 1 --batch 256 --workers N` (benchmarks/gpu_check.sh does): measured GPU rows.
4. Prints one table: per stage, the measured rows, and the projected wall time on IN-100 and IN-1k on 1 and 8 GPUs:
   GPU time from the last device measurement (H100, ViT-B/16 K-MIM bf16 batch 128: 2,802 img/s, docs/benchmarks.md;
   ViT-S and forward-only rates scaled by FLOPs counted here), CPU time from this machine's per-core rates times
   --cores-per-gpu; a stage takes the larger of the two (the loader and the GPU overlap).
`--inertia` measures the tokenizer-fit rule instead (on the folder only): inertia over all patches of a K = 50 fit
on `fit_images` images against the fit on every image. `--quick` (a 100-class folder of 6 train + 2 val images
per class) finishes in about 8 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
PRESET, FT_PRESET = "configs/in100_vits16_kmim.yaml", "configs/in100_vits16_finetune.yaml"
GPU_IMG_S_VITB_STEP = 2802.0  # H100, ViT-B/16 K-MIM bf16 batch 128 (docs/benchmarks.md, benchmarks/gpu_check.sh)
DATASETS = {"IN-100": (126_689, 5_000, 200, 20_000), "IN-1k": (1_281_167, 50_000, 800, 100_000)}  # train, val,
# pretraining epochs, tokenizer.fit_images of the presets
LARS_EPOCHS, FT_EPOCHS = 90, 100


# ---- the folder ---------------------------------------------------------------------------------------------------


def image_size(rng: np.random.Generator) -> tuple[int, int]:
    if rng.random() < 0.7:
        w, h = 500, int(500 / rng.choice([4 / 3, 3 / 2, 1.0, 3 / 4, 2 / 3]))
    else:
        w, h = int(rng.integers(200, 1000)), int(rng.integers(200, 1000))
    return (w, h) if rng.random() < 0.5 else (h, w)


def photo(rng: np.random.Generator, cls: int, w: int, h: int) -> Image.Image:
    """Smooth class-tinted shapes plus fine texture: JPEG sizes close to photos', and a class signal."""
    tint = np.random.default_rng(cls).uniform(40, 215, 3)
    base = rng.normal(tint, 45, (max(2, h // 40), max(2, w // 40), 3)).clip(0, 255).astype(np.uint8)
    img = np.asarray(Image.fromarray(base).resize((w, h), Image.BICUBIC), dtype=np.float32)
    freq = 0.05 + 0.02 * (cls % 7)
    yy, xx = np.mgrid[0:h, 0:w]
    img += 25 * np.sin(freq * xx + 0.7 * freq * yy + rng.uniform(0, 6))[..., None]
    img += rng.normal(0, 12, img.shape)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def make_folder(root: Path, classes: int, train: int, val: int, seed: int) -> dict:
    manifest = {"classes": classes, "train_per_class": train, "val_per_class": val, "seed": seed}
    done = root / "rehearsal.json"
    if done.is_file() and json.loads(done.read_text()).get("spec") == manifest:
        return json.loads(done.read_text())
    rng = np.random.default_rng(seed)
    sizes = []
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = image_size(rng)
                path = d / f"n{c:08d}_{i}.JPEG"
                photo(rng, c, w, h).save(path, quality=90)
                sizes.append(path.stat().st_size)
    info = {"spec": manifest, "files": len(sizes), "mean_kb": round(float(np.mean(sizes)) / 1024, 1)}
    done.write_text(json.dumps(info))
    return info


# ---- per-core rates -----------------------------------------------------------------------------------------------


def view_rates(root: Path, n: int) -> dict[str, float]:
    """Images/s of one core for each view (decode + transform), on the folder at `root`."""
    from kmim.config import load_config
    from kmim.data import build_dataset
    from kmim.data.transforms import finetune_transform, lars_probe_transform

    torch.set_num_threads(1)
    cfg = load_config(PRESET, [f"data.root={root}"])
    ft = load_config(FT_PRESET, [f"data.root={root}"]).finetune
    views = {}
    eval_ds, info = build_dataset(cfg.data, "train")
    views["eval"] = eval_ds
    views["pretrain"] = build_dataset(cfg.data, "train", train=True)[0]
    lars_ds, _ = build_dataset(cfg.data, "train")
    lars_ds.transform = lars_probe_transform(cfg.data, info.mean, info.std, native=info.native_size)
    views["lars"] = lars_ds
    ft_ds, _ = build_dataset(cfg.data, "train")
    ft_ds.transform = finetune_transform(cfg.data, ft, info.mean, std=info.std, native=info.native_size)
    views["finetune"] = ft_ds
    out = {}
    for name, ds in views.items():
        count = min(n, len(ds))
        t0 = time.perf_counter()
        for i in range(count):
            ds[i]
        out[name] = count / (time.perf_counter() - t0)
    return out


# ---- the stages ---------------------------------------------------------------------------------------------------


def launcher(nproc: int, port: int) -> list[str]:
    return (
        [sys.executable, "-m", "kmim"]
        if nproc == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(nproc),
            "--master-port",
            str(port),
            "-m",
            "kmim",
        ]
    )


def kmim(*args: str, nproc: int = 1, port: int = 29560) -> tuple[float, subprocess.CompletedProcess]:
    launch = launcher(nproc, port)
    t0 = time.perf_counter()
    proc = subprocess.run([*launch, *args], env=ENV, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"stage failed: kmim {' '.join(args)}\n{proc.stderr[-3000:]}")
    return wall, proc


def stages(
    root: Path, out: Path, n_train: int, n_val: int, fit_images: int, workers: int, nproc: int = 2, batch: int = 16
) -> list[dict]:
    data = [f"data.root={root}", f"data.num_workers={workers}"]
    rows = []
    fit = [*data, f"tokenizer.fit_images={fit_images}"]
    w1, _ = kmim("tokenize", "-q", "-c", PRESET, *fit, "--out", str(out / "tok1.pt"))
    rows.append({"stage": "tokenize (fit_images)", "procs": 1, "images": fit_images, "wall_s": w1})
    if nproc >= 2:
        w2, _ = kmim("tokenize", "-q", "-c", PRESET, *fit, "--out", str(out / "tok2.pt"), nproc=nproc)
        a, b = (torch.load(out / f"tok{i}.pt", weights_only=False)["state"]["centroids"] for i in (1, 2))
        rows.append(
            {
                "stage": "tokenize (fit_images)",
                "procs": nproc,
                "images": fit_images,
                "wall_s": w2,
                "note": f"centroids equal to 1 process: {torch.equal(a, b)}",
            }
        )
    batch = min(batch, n_train // 2)
    run = [
        *data,
        f"out_dir={out}",
        "name=pre",
        f"tokenizer.path={out / 'tok1.pt'}",
        "train.epochs=1",
        "train.warmup_epochs=0",
        f"train.batch_size={batch}",
        f"train.micro_batch_size={batch // 4}",
    ]
    w, _ = kmim("pretrain", "-q", "-c", PRESET, *run, nproc=nproc)
    rows.append({"stage": "pretrain (1 epoch)", "procs": nproc, "images": n_train // batch * batch, "wall_s": w})
    others = [o for o in run if not o.startswith(("out_dir=", "name="))]
    rows.append(preempted_pretraining([*others, f"out_dir={out}", "name=preempted"], out / "preempted", nproc))
    w, _ = kmim("knn", "-q", str(out / "pre"))
    rows.append({"stage": "knn (train + val features)", "procs": 1, "images": n_train + n_val, "wall_s": w})
    lars = [
        "eval.lars.epochs=1",
        "eval.lars.warmup_epochs=0",
        f"eval.lars.batch_size={batch}",
        f"eval.lars.micro_batch_size={batch // 2}",
    ]
    w, proc = kmim("probe", "-q", str(out / "pre"), *lars, nproc=nproc)
    top1 = json.loads(proc.stdout)["linear_probe_top1"]
    rows.append(
        {
            "stage": "LARS probe (1 epoch)",
            "procs": nproc,
            "images": n_train // batch * batch + n_val,
            "wall_s": w,
            "note": f"top-1 {top1:.1f} (1 epoch)",
        }
    )
    ft = [
        *data,
        f"out_dir={out}",
        "name=ft",
        "finetune.epochs=1",
        "finetune.warmup_epochs=0",
        f"finetune.batch_size={batch}",
        f"finetune.micro_batch_size={batch // 2}",
    ]
    w, _ = kmim("finetune", "-q", str(out / "pre"), "-c", FT_PRESET, *ft, nproc=nproc)
    rows.append(
        {"stage": "finetune (1 epoch)", "procs": nproc, "images": n_train // batch * batch + n_val, "wall_s": w}
    )
    return rows


def _descendants(pid: int) -> list[int]:
    """The processes under `pid` (Linux /proc): torchrun's workers."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def preempted_pretraining(run: list[str], run_dir: Path, nproc: int) -> dict:
    """The pretraining stage as SLURM preempts it: SIGUSR1 to every process of the job after the first logged step
    (the ranks and their DataLoader workers, as SLURM's cgroup signalling does), then the same command line again,
    which must continue the run to its end (`kmim.launch.start_pretraining` resumes a folder holding this config's
    checkpoint). Each rank exits 75; torchrun reports that as its own exit 1 (srun, in scripts/slurm/kmim.sbatch,
    passes the tasks' 75 on)."""
    import signal

    cmd = [*launcher(nproc, 29561), "pretrain", "-q", "-c", PRESET, *run, "train.log_every=1", "train.sync_every=1"]
    metrics = run_dir / "metrics.jsonl"
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and not (metrics.is_file() and '"step"' in metrics.read_text()):
        time.sleep(0.2)
    for pid in _descendants(proc.pid) if nproc > 1 else [proc.pid]:
        os.kill(pid, signal.SIGUSR1)
    _, err = proc.communicate()
    said = "kmim pretrain: preempted: stopped on SIGUSR1" in err
    if not said or proc.returncode not in (75, 1 if nproc > 1 else 75):  # torchrun reports a child's 75 as its 1
        sys.exit(f"preempted pretraining exited {proc.returncode} without its preempted line:\n{err[-3000:]}")
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["train_state"]
    again = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True)
    if again.returncode != 0:
        sys.exit(f"the same command did not continue the preempted run:\n{again.stderr[-3000:]}")
    done = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["train_state"]
    note = (
        f"SIGUSR1 to every process at epoch {state['epoch'] + 1} step {state['epoch_step']}: exit "
        f"{proc.returncode}; the same command continued to step {done['step']} (epoch {done['epoch']})"
    )
    return {"stage": "pretrain, preempted + rerun", "procs": nproc, "images": 0, "wall_s": time.perf_counter() - t0,
            "note": note}  # fmt: skip


# ---- projections --------------------------------------------------------------------------------------------------


def flops_per_image() -> dict[str, float]:
    """FLOPs per image (FlopCounterMode, batch 2, eager fp32 on CPU): MIM training step, encoder forward on all
    patches, classifier forward + backward; for vit-s16 and vit-b16 at 224 px."""
    from torch.utils.flop_counter import FlopCounterMode

    from kmim.config import ModelConfig
    from kmim.models import EncoderSpec, build_classifier, build_mim, encoder_kwargs, resolve_spec

    out = {}
    x = torch.randn(2, 3, 224, 224)
    for preset in ("vit-s16", "vit-b16"):
        spec = resolve_spec(ModelConfig(preset=preset))
        mim = build_mim(spec, 224, 3, out_dim=50)
        with FlopCounterMode(display=False) as fc:
            pred, _ = mim(x, 0.75, torch.rand(2, 196), masked_only=True)
            pred.float().sum().backward()
        out[f"{preset} step"] = fc.get_total_flops() / 2
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            mim.encoder.forward_features(x)
        out[f"{preset} forward"] = fc.get_total_flops() / 2
        clf = build_classifier(
            EncoderSpec(spec.timm_name, encoder_kwargs(spec, 224, 3)), 100, pool="avg", drop_path=0.0
        )
        with FlopCounterMode(display=False) as fc:
            clf(x).sum().backward()
        out[f"{preset} finetune"] = fc.get_total_flops() / 2
    return out


def kmeans_seconds() -> float:
    """K-means at the IN presets' sample size (K = 50 x 1,000 points x 768 dims, 20 iterations) on this machine."""
    from kmim.fit.kmeans import fit_kmeans

    x = np.random.default_rng(0).normal(size=(100_000, 768)).astype(np.float32)
    t0 = time.perf_counter()
    fit_kmeans(x, 50, 20, seed=0, max_points_per_centroid=1000, progress=False)
    return time.perf_counter() - t0


def gpu_rate(flops: dict[str, float], model: str, kind: str) -> float:
    """Images/s of one H100 at the measured ViT-B step's FLOP rate (the same MFU assumed for every kind)."""
    return GPU_IMG_S_VITB_STEP * flops["vit-b16 step"] / flops[f"{model} {kind}"]


def projections(rates: dict[str, float], flops: dict[str, float], km_s: float, cores: int) -> list[dict]:
    rows = []
    for name, (n_train, n_val, epochs, fit_images) in DATASETS.items():
        model = "vit-s16" if name == "IN-100" else "vit-b16"
        for gpus in (1, 8):
            cpu = cores * gpus  # cores decoding in parallel

            def stage(images: float, view: str, kind: str, cpu: int = cpu, gpus: int = gpus, model: str = model):
                cpu_s = images / (rates[view] * cpu)
                return max(cpu_s, images / (gpu_rate(flops, model, kind) * gpus))

            rows.append(
                {
                    "data": name,
                    "gpus": gpus,
                    "tokenize": fit_images / (rates["eval"] * cpu) + km_s,
                    "pretrain": epochs * stage(n_train, "pretrain", "step"),
                    "knn": stage(n_train + n_val, "eval", "forward"),
                    "lars": LARS_EPOCHS * stage(n_train, "lars", "forward") + stage(n_val, "eval", "forward"),
                    "finetune": FT_EPOCHS * (stage(n_train, "finetune", "finetune") + stage(n_val, "eval", "forward")),
                }
            )
    return rows


def hours(s: float) -> str:
    return f"{s / 60:.1f} min" if s < 3600 else f"{s / 3600:.1f} h"


def inertia_vs_fit_images(root: Path, counts: list[int]) -> list[dict]:
    """K = 50 fits on `fit_images` images (the presets' sample rule) scored by the inertia over a uniform sample of
    patches of every training image (50 per image), against the fit on every image."""
    import faiss

    from kmim.config import load_config
    from kmim.fit import fit_tokenizer, training_split

    torch.set_num_threads(2)
    cfg = load_config(PRESET, [f"data.root={root}"])
    data = training_split(cfg)
    toks = {
        n: fit_tokenizer(
            load_config(PRESET, [f"data.root={root}", f"tokenizer.fit_images={n}"]).tokenizer, data, progress=False
        )
        for n in counts
    }
    rng, chunks = np.random.default_rng(1), []
    source = next(iter(toks.values())).source
    for i in range(len(data.ds)):
        x = source(data.ds[i][0][None])[0].numpy()  # (196, 768)
        chunks.append(x[rng.choice(len(x), 50, replace=False)])
    pts = np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)
    out = []
    for n, tok in toks.items():
        index = faiss.IndexFlatL2(pts.shape[1])
        index.add(np.ascontiguousarray(tok.centroids.numpy(), dtype=np.float32))
        out.append(
            {
                "fit_images": n,
                "patches_fitted": tok.meta["fit"]["n_fit"],
                "inertia": float(index.search(pts, 1)[0].mean()),
            }
        )
    full = out[-1]["inertia"]
    for row in out:
        row["excess_pct"] = 100 * (row["inertia"] / full - 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="6 train + 2 val images per class (about 8 min here)")
    ap.add_argument("--root", type=Path, default=None, help="where the folder is written (default: a temp folder)")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--train-per-class", type=int, default=30)
    ap.add_argument("--val-per-class", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers per process in the stages")
    ap.add_argument("--nproc", type=int, default=2, help="processes of the torchrun stages (1 on a 1-GPU machine)")
    ap.add_argument("--batch", type=int, default=16, help="global batch of the stages (e.g. 256 on a GPU)")
    ap.add_argument("--cores-per-gpu", type=int, default=12, help="decode cores per GPU in the projection")
    ap.add_argument("--inertia", action="store_true", help="only measure inertia vs tokenizer.fit_images")
    args = ap.parse_args()
    train, val = (6, 2) if args.quick else (args.train_per_class, args.val_per_class)
    tmp = tempfile.TemporaryDirectory()
    root = args.root or Path(tmp.name) / "in-shaped"
    t0 = time.perf_counter()
    info = make_folder(root, args.classes, train, val, args.seed)
    print(f"folder {root}: {info['files']} JPEGs, mean {info['mean_kb']} KB ({time.perf_counter() - t0:.0f} s)")
    if args.inertia:
        n_img = args.classes * train
        counts = sorted({max(50, n_img // 16), n_img // 8, n_img // 4, n_img // 2, n_img})
        print("\ninertia over all patches (50 per image, every image) vs tokenizer.fit_images, K = 50:")
        print("| fit_images | patches fitted | inertia | excess vs every image |\n|---:|---:|---:|---:|")
        for r in inertia_vs_fit_images(root, counts):
            print(f"| {r['fit_images']} | {r['patches_fitted']} | {r['inertia']:.4f} | {r['excess_pct']:+.2f} % |")
        return
    prepared = Path(tmp.name) / "prepared"
    cores = os.cpu_count() or 1
    w, _ = kmim("prepare", str(root), "--out", str(prepared), "-q", "--workers", str(cores))
    print(f"kmim prepare (short side 256, {cores} workers): {info['files'] / w:.0f} img/s, startup included")
    n = 60 if args.quick else 200
    rates, rates_prep = view_rates(root, n), view_rates(prepared, n)
    print("\nper-core img/s (decode + view), original | prepared copy:")
    for k in rates:
        print(f"  {k:9s} {rates[k]:7.1f} | {rates_prep[k]:7.1f}  ({rates_prep[k] / rates[k]:.2f}x)")
    n_train, n_val = args.classes * train, args.classes * val
    out = Path(tmp.name) / "runs"
    fit_images = min(n_train, 200 if args.quick else 1000)
    rows = stages(root, out, n_train, n_val, fit_images, args.workers, args.nproc, args.batch)
    print("\n| stage | processes | images | wall s here | img/s per process | note |\n|---|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['stage']} | {r['procs']} | {r['images']} | {r['wall_s']:.1f} | "
            f"{r['images'] / r['wall_s'] / r['procs']:.1f} | {r.get('note', '')} |"
        )
    flops, km = flops_per_image(), kmeans_seconds()
    print(f"\nK-means at the presets' sample (100,000 x 768 -> K = 50, 20 iterations): {km:.1f} s here")
    print("GFLOP per image: " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in flops.items()))
    for label, r in (("original JPEGs", rates), ("kmim prepare copy", rates_prep)):
        print(
            f"\nprojected wall time, {label}, {args.cores_per_gpu} decode cores per GPU, GPU rate from the H100 "
            f"ViT-B/16 measurement scaled by FLOPs (same MFU):"
        )
        print("| data | GPUs | tokenizer fit | pretrain | kNN | LARS probe (90 ep) | finetune (100 ep) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for p in projections(r, flops, km, args.cores_per_gpu):
            print(
                f"| {p['data']} | {p['gpus']} | {hours(p['tokenize'])} | {hours(p['pretrain'])} | {hours(p['knn'])}"
                f" | {hours(p['lars'])} | {hours(p['finetune'])} |"
            )
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
