#!/usr/bin/env bash
# The GPU check, one script, <= 8 minutes on one H100/H200: the CUDA tests; the real training loop (kmim pretrain's
# Trainer) for ViT-B/16 K-MIM vs MAE on device batches with each lever on/off (eager with 2 interleaved repeats and
# a profile, sync_every=20, batch 256, torch.compile); the same loop reading an ImageNet-shaped JPEG folder with the
# machine's cores; and the paper-scale rehearsal's stages on the GPU (ViT-S/16, measured rows beside the
# projections); the online target's step time; MAE's decoder against the cross-attention predictor; the cost of one ViT-B checkpoint written from the GPU; then, when
# ../shared/data/imagenette224.tar is there, Imagenette-128 ViT-S/16 MAE and K-MIM (lightly's protocol) for a few
# epochs with kNN at each checkpoint. One table per part; each part has its own timeout, so one slow part cannot eat
# the budget.
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
echo "== MAE decoder vs cross-attention predictor (100 % / 25 % of masked patches), FLOPs and step time, bf16"
timeout 90 $PY benchmarks/bench_decoder.py --device cuda --batch 64 --steps 10
echo "== ViT-B/16 checkpoint write from the GPU (what train.last_every trades against)"
timeout 60 $PY benchmarks/bench_checkpoint.py --device cuda --dir "$(dirname "$FOLDER")"
TAR=${IMAGENETTE_TAR:-../shared/data/imagenette224.tar}
if [ -f "$TAR" ]; then
  NETTE=$(dirname "$FOLDER")/nette
  mkdir -p "$NETTE" && tar -xf "$TAR" -C "$NETTE"
  $PY -m kmim prepare "$NETTE/imagenette224" --out "$NETTE/n160" --short-side 160 -q --workers "$(nproc)"
  echo "== Imagenette-128 ViT-S/16 (lightly's protocol, beside its MAE ViT-S 61.0 % kNN): img/s, then as many epochs as fit"
  for M in mae kmim; do  # 6 epochs each here; kNN every 2 (kmim knn on the numbered checkpoints)
    timeout 150 $PY -m kmim pretrain -q -c configs/imagenette128_vits16_$M.yaml data.root="$NETTE/n160" \
      train.epochs=6 train.warmup_epochs=1 train.save_every=2 name=nette_$M out_dir="$NETTE/runs"
    for C in "$NETTE"/runs/nette_$M/checkpoints/checkpoint-*.pt; do
      echo "$M $(basename "$C"): $(timeout 60 $PY -m kmim knn -q "$C" 2>/dev/null | tr -d '\n')"
    done
  done
fi
echo "== total $(( $(date +%s) - T0 )) s"
