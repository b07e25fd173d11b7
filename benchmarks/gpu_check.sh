#!/usr/bin/env bash
# The GPU check, one script, <= 8 minutes on one H100/H200: the CUDA tests; the real training loop (kmim pretrain's
# Trainer) for ViT-B/16 K-MIM vs MAE on device batches with each lever on/off (eager with 2 interleaved repeats and
# a profile, sync_every=20, batch 256, torch.compile); the same loop reading an ImageNet-shaped JPEG folder with the
# machine's cores; and the paper-scale rehearsal's stages on the GPU (ViT-S/16, measured rows beside the
# projections); the online target's step time; the cost of one ViT-B checkpoint written from the GPU. One table per part; each part has its own timeout, so one slow
# part cannot eat the budget.
#   bash benchmarks/gpu_check.sh            (from the repository root, with the package importable)
set -uo pipefail
PY=${PY:-python}
T0=$(date +%s)
echo "== environment"
$PY -c "import torch, timm, os; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name(0), os.cpu_count(), 'cores')"
echo "== CUDA tests"
timeout 120 $PY -m pytest -q -p no:cacheprovider -m cuda tests/engine/test_cuda.py
B="$PY benchmarks/bench_gpu_train.py --preset vit-b16 --steps 30"
echo "== ViT-B/16, device batches: eager, batch 128 (with the GPU busy fraction and attention kernels)"
timeout 150 $B --batch 128 --profile
echo "== ViT-B/16: sync_every=20 (the loss read every 20 steps)"
timeout 90 $B --batch 128 --sync-every 20 --repeats 1
echo "== ViT-B/16: batch 256"
timeout 90 $B --batch 256 --repeats 1
echo "== ViT-B/16: torch.compile"
timeout 150 $B --batch 128 --compile --repeats 1
FOLDER=$(mktemp -d)/in-shaped
echo "== rehearsal on the GPU: ImageNet-shaped folder (100 classes x 16 + 4), stages on 1 process, $(nproc) workers"
timeout 240 $PY benchmarks/rehearse_imagenet.py --root "$FOLDER" --train-per-class 16 --nproc 1 --batch 256 \
  --workers "$(nproc)"
echo "== ViT-B/16 reading the JPEG folder (the real loader, $(nproc) workers)"
timeout 120 $B --batch 128 --repeats 1 --folder "$FOLDER"
echo "== online clustering targets vs K-MIM PIXEL vs MAE, ViT-B/16 step time (CAPI's K = 16,384)"
timeout 90 $PY benchmarks/bench_online.py --preset vit-b16 --batch 128 --steps 10 --k 16384
echo "== ViT-B/16 checkpoint write from the GPU (what train.last_every trades against)"
timeout 60 $PY benchmarks/bench_checkpoint.py --device cuda --dir "$(dirname "$FOLDER")"
echo "== total $(( $(date +%s) - T0 )) s"
