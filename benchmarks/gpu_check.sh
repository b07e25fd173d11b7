#!/usr/bin/env bash
# The GPU check (one script, about 6 minutes on one H100): the CUDA-marked tests, K-MIM and MAE step throughput and
# MFU for ViT-B/16 at 224 px in bf16 on synthetic data (eager, then torch.compile), loader vs step with 8 workers,
# and a short fine-tuning smoke run. Prints one table each.
#   bash benchmarks/gpu_check.sh            (from the repository root, with the package importable)
set -uo pipefail
PY=${PY:-python}
echo "== environment"
$PY -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name(0))"
echo "== CUDA tests"
$PY -m pytest -q -p no:cacheprovider -m cuda tests/engine/test_cuda.py
echo "== ViT-B/16 224px bf16 step (K-MIM vs MAE)"
$PY benchmarks/bench_gpu_step.py --preset vit-b16 --img 224 --batch 128 --steps 20
timeout 240 $PY benchmarks/bench_gpu_step.py --preset vit-b16 --img 224 --batch 128 --steps 20 --compile
echo "== loader vs step (mnist5k; 224px JPEG ImageFolder, 8 workers)"
$PY benchmarks/bench_loader.py --workers 8 --batches 40
echo "== fine-tuning smoke (mnist5k random init, 1 epoch, GPU)"
OUT_FT=$(mktemp -d)
$PY -m kmim finetune --random-init -q -c configs/mnist5k_finetune.yaml "out_dir=$OUT_FT" finetune.epochs=1 \
  finetune.warmup_epochs=0 | tail -12
