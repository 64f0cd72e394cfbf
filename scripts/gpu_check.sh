#!/usr/bin/env bash
# GPU check (a machine with a CUDA GPU; under 5 minutes). Prints:
#   1. CUDA + AMP training-step throughput (ResCom vs two-view CE, images/s);
#   2. a 2-epoch CIFAR-sized run on synthetic long-tailed data with AMP and channels_last;
#   3. the same through torchrun with 1 process (DDP + queue all-gather path);
#   4. if onnxruntime-gpu is installed: the exported model on the CUDA execution provider, raw ORT throughput,
#      and the service's throughput under load with the provider it really used.
# Usage: bash scripts/gpu_check.sh [OUT_DIR]     (PYTHON=... to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${1:-${OUT:-runs/gpu_check}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
$PY - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device visible to torch"
print("torch", torch.__version__, "| GPU:", torch.cuda.get_device_name(0), "| bf16:", torch.cuda.is_bf16_supported())
PY

echo "== 1. training step (CUDA, fp32 forward) =="
$PY benchmarks/train_step.py --device cuda --batch 128 --steps 30 | tee "$OUT/train_step.txt"

echo "== 2. synthetic CIFAR-sized long-tailed data, 2 epochs, AMP =="
$PY scripts/make_synthetic_folder.py --out "$OUT/synthetic" --classes 10 --max-per-class 500 --imbalance-factor 10 --size 32
$PY training/train.py --config training/configs/cifar10_lt_if100.yaml --device cuda --epochs 2 --no-progress \
  --output-dir "$OUT/run_amp" data.name=imagefolder data.dir="$OUT/synthetic" "data.kwargs={resize: 32, crop: 32}" \
  data.preset=cifar data.num_workers=4 train.amp=auto optim.warmup_epochs=1 2>&1 | tee "$OUT/run_amp.log"
grep -h images_per_s "$OUT/run_amp/log.jsonl" | tail -2

echo "== 3. torchrun, 1 process (DDP) =="
$PY -m torch.distributed.run --standalone --nproc_per_node=1 training/train.py \
  --config training/configs/cifar10_lt_if100.yaml --epochs 1 --no-progress --output-dir "$OUT/run_ddp" \
  data.name=imagefolder data.dir="$OUT/synthetic" "data.kwargs={resize: 32, crop: 32}" data.preset=cifar \
  data.num_workers=4 optim.warmup_epochs=1 2>&1 | tee "$OUT/run_ddp.log"

echo "== 4. ONNX Runtime CUDA and the service =="
if $PY -c "import onnxruntime as o, sys; sys.exit(0 if 'CUDAExecutionProvider' in o.get_available_providers() else 1)"; then
  $PY export/to_onnx.py --checkpoint "$OUT/run_amp/best.pt" --model-repository "$OUT/models" --name synth --force --version 1
  $PY benchmarks/serve_load.py --model-repository "$OUT/models" --model synth --providers cuda \
    --images "$OUT/synthetic/test" --concurrency 64 --requests 3000 | tee "$OUT/serve_cuda.txt"
else
  echo "onnxruntime-gpu with CUDAExecutionProvider not installed here: step 4 skipped"
fi
echo "gpu check done; outputs in $OUT"
