#!/usr/bin/env bash
# The GPU check (one script, under 8 minutes on one H100): the CUDA-marked tests, K-MIM and MAE step throughput and
# MFU for ViT-B/16 at 224 px in bf16 on synthetic data, and a short fine-tuning smoke run. Prints one table each.
#   bash benchmarks/gpu_check.sh            (from the repository root, with the package installed)
set -euo pipefail
PY=${PY:-python}
echo "== CUDA tests"
$PY -m pytest -q -m cuda tests/engine/test_cuda.py
echo "== ViT-B/16 224px bf16 step (K-MIM vs MAE)"
$PY benchmarks/bench_gpu_step.py --preset vit-b16 --img 224 --batch 128 --steps 20
$PY benchmarks/bench_gpu_step.py --preset vit-b16 --img 224 --batch 128 --steps 20 --compile
echo "== loader vs step (mnist5k; 224px JPEG ImageFolder, 8 workers)"
$PY benchmarks/bench_loader.py --workers 8 --batches 40
echo "== fine-tuning smoke (mnist5k random init, 1 epoch, GPU)"
OUT=$(mktemp -d)
$PY -m kmim finetune --random-init -q -c configs/mnist5k_finetune.yaml "out_dir=$OUT" finetune.epochs=1 \
  finetune.warmup_epochs=0 | tail -12
