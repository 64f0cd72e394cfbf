#!/usr/bin/env bash
# GPU check: one shot on a machine lent for ~10 minutes (estimated 5-6 minutes on one H200, never measured yet,
# plus TensorRT engine builds when TensorRT is installed). `make gpu-check` builds both environments first.
#
#   bash scripts/gpu_check.sh [--out DIR] [--budget S]  # GPU machine: benchmarks/results/gpu.{md,json}; S: 510
#   bash scripts/gpu_check.sh --dry-run        # on any CPU machine (CI runs it): every command, flag and import
#
# Steps (each bounded by `timeout` and by what is left of --budget; a failed step is recorded and the others
# still run; exit 1 if any failed):
#   env-train     driver (nvidia-smi), torch, CUDA, cuDNN, NCCL, bf16   [.venv: torch + CPU onnxruntime]
#   env-serve     onnxruntime-gpu version, get_available_providers(), print_debug_info(), CUDA libraries,
#                 TensorRT library                                       [.venv-gpu: .[serve-gpu], no torch]
#   train-amp     ResNet-32 training steps, AMP bf16 and fp16 (GradScaler), channels_last: img/s ResCom vs CE
#   ddp           2 ranks under torchrun (NCCL with >= 2 GPUs; with one GPU both ranks on it over gloo): queue,
#                 weights and gathered labels identical on every rank (scripts/ddp_check.py)
#   loss-inat     ResCom loss + queue + mining at iNaturalist scale (C=8142, K=8, Qn=2000) on the GPU
#   data, train-r50, export
#                 synthetic long-tailed image folder, 1 epoch of ResNet-50 at 224 with training/train.py (bf16,
#                 channels_last), export to ONNX (training/ -> export/ as a user runs them; without the
#                 parity check: a 1-epoch ResNet-50 has huge logits, whose fp32 rounding exceeds its 1e-4)
#   ddp-train     training/train.py itself under torchrun with 2 ranks, 1 epoch of ResNet-32 on the synthetic
#                 folder at 32 x 32 (DistributedSampler, DDP, sharded evaluation gathered across ranks)
#   placement-cuda ONNX Runtime profile of one batch of 64 on CUDA: fails if any real node ran on the CPU
#   serve-cuda    the service on CUDA vs raw ORT-CUDA at batch 64 (benchmarks/serve_load.py --providers cuda)
#   placement-tensorrt, serve-tensorrt
#                 the same on TensorRT (fp16), only when libnvinfer is installed in .venv-gpu; the rescom GPU
#                 image does not ship TensorRT (docs/gpu.md)
#   report        benchmarks/results/gpu.md + gpu.json (scripts/gpu_report.py)
# Any fallback to the CPU fails its step: torch without CUDA, onnxruntime without the CUDA provider or its
# libraries, a session or the service on another provider than asked, CPU-placed nodes doing real work.
#
# --dry-run: first parses the exact GPU command line of every Python step with that script's own parser
# (scripts/check_args.py: an unknown flag or bad value fails), then runs every step on the CPU with the same
# flags and small values (cpu / provider cpu / tiny sizes), so imports and code paths run too. Its page goes to
# OUT/gpu.md, never to benchmarks/results.
# Interpreters: PYTHON (default .venv/bin/python), GPU_PYTHON (default .venv-gpu/bin/python; the dry run uses
# PYTHON for both).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

DRY=0
OUT=runs/gpu_check
BUDGET=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT=${2:?--out needs a folder}; shift ;;
    --budget) BUDGET=${2:?--budget needs seconds}; shift ;;
    -h|--help) sed -n '2,37p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (allowed: --dry-run, --out DIR, --budget SECONDS)" >&2; exit 2 ;;
  esac
  shift
done
[ "$DRY" = 1 ] && [ "$OUT" = runs/gpu_check ] && OUT=runs/gpu_check_dry
# The whole run must fit the lent window: steps get at most what is left of BUDGET (minus 30 s kept for the
# report); a step that would start with under 20 s left is skipped as "out of time".
[ -n "$BUDGET" ] || { [ "$DRY" = 1 ] && BUDGET=1800 || BUDGET=510; }
case $BUDGET in '' | *[!0-9]*) echo "gpu_check: --budget takes whole seconds, got '$BUDGET'" >&2; exit 2 ;; esac
DEADLINE=$((SECONDS + BUDGET))
PY=${PYTHON:-.venv/bin/python}
GPU_PY=${GPU_PYTHON:-.venv-gpu/bin/python}
[ "$DRY" = 1 ] && GPU_PY=$PY
for interp in "$PY" "$GPU_PY"; do
  if ! command -v "$interp" >/dev/null 2>&1; then
    echo "gpu_check: no interpreter '$interp'; run 'make setup' (and 'make setup-gpu' for .venv-gpu)" >&2
    exit 2
  fi
done
command -v timeout >/dev/null || { echo "gpu_check: 'timeout' (coreutils) is missing" >&2; exit 2; }
rm -rf "$OUT" && mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 ORT_DISABLE_TELEMETRY=1

# ------------------------------------------------------------------------------------------ values per mode
gpu_values() {
  DEV=cuda; PROVIDERS=cuda; REQUIRE=1
  AMPS=bf16,fp16; TB=128; TS=30; TW=5
  DDP_AMP=bf16; DS=20; DB=64
  LOSS_C=8142; LOSS_QN=2000; LOSS_STEPS=10; LOSS_WARM=2
  SYN_SIZE=256; SYN_N=40; SYN_EVAL=20; RESIZE=256; CROP=224; BS=64; WORKERS=4; TRAIN_AMP=bf16
  MAXB=64; CONC=128; REQS=4000; WARM=500
}
dry_values() {
  DEV=cpu; PROVIDERS=cpu; REQUIRE=0
  AMPS=bf16,fp16; TB=2; TS=1; TW=0
  DDP_AMP=none; DS=1; DB=4
  LOSS_C=100; LOSS_QN=50; LOSS_STEPS=1; LOSS_WARM=0
  SYN_SIZE=64; SYN_N=20; SYN_EVAL=2; RESIZE=64; CROP=56; BS=8; WORKERS=0; TRAIN_AMP=none
  MAXB=8; CONC=4; REQS=40; WARM=8
}
build_commands() {
  TRAIN=(scripts/gpu_train_check.py --device "$DEV" --amp "$AMPS" --channels-last --batch "$TB" --steps "$TS"
    --warmup "$TW" --json "$OUT/train.json")
  DDP=(scripts/ddp_check.py --device "$DEV" --amp "$DDP_AMP" --channels-last --steps "$DS" --batch "$DB"
    --json "$OUT/ddp.json")
  LOSS=(benchmarks/loss_scale.py --device "$DEV" --classes "$LOSS_C" --queue-size 8 --dim 128 --batch 128
    --negatives "$LOSS_QN" --steps "$LOSS_STEPS" --warmup "$LOSS_WARM")
  SYN=(scripts/make_synthetic_folder.py --out "$OUT/synthetic" --classes 10 --max-per-class "$SYN_N"
    --imbalance-factor 10 --eval-per-class "$SYN_EVAL" --size "$SYN_SIZE")
  TRAIN_R50=(training/train.py --config training/configs/imagenet_lt.yaml --device "$DEV" --epochs 1
    --batch-size "$BS" --lr 0.01 --workers "$WORKERS" --no-progress --output-dir "$OUT/run_r50" data.name=imagefolder
    "data.dir=$OUT/synthetic" "data.kwargs={resize: $RESIZE, crop: $CROP}" "train.amp=$TRAIN_AMP"
    train.channels_last=true optim.warmup_epochs=0 loss.num_negatives=64 "eval.batch_size=$BS")
  DDP_TRAIN=(training/train.py --config training/configs/cifar10_lt_if100.yaml --device "$DEV" --epochs 1
    --batch-size "$BS" --workers "$WORKERS" --no-progress --output-dir "$OUT/run_ddp" data.name=imagefolder
    "data.dir=$OUT/synthetic" "data.kwargs={resize: 32, crop: 32}" data.preset=cifar "train.amp=$TRAIN_AMP"
    train.channels_last=true optim.warmup_epochs=0 "eval.batch_size=$BS")
  EXPORT=(export/to_onnx.py --checkpoint "$OUT/run_r50/best.pt" --model-repository "$OUT/models" --name resnet50
    --version 1 --force --max-batch-size "$MAXB" --calibration temperature --no-verify)
  PLACE_CUDA=(scripts/ort_placement.py --model-dir "$OUT/models/resnet50/1" --providers "$PROVIDERS"
    --batch "$MAXB" --json "$OUT/placement_cuda.json")
  SERVE_CUDA=(benchmarks/serve_load.py --model-repository "$OUT/models" --model resnet50 --providers "$PROVIDERS"
    --images-dir "$OUT/synthetic/test" --max-batch-size "$MAXB" --concurrency "$CONC" --requests "$REQS"
    --raw-images "$REQS" --warmup "$WARM" --skip-no-batching --no-synthetic-fallback --json "$OUT/serve_cuda.json")
  PLACE_TRT=(scripts/ort_placement.py --model-dir "$OUT/models/resnet50/1" --providers tensorrt --trt-fp16
    --batch "$MAXB" --json "$OUT/placement_tensorrt.json")
  SERVE_TRT=(benchmarks/serve_load.py --model-repository "$OUT/models" --model resnet50 --providers tensorrt
    --env RESCOM_TRT_FP16=true --images-dir "$OUT/synthetic/test" --max-batch-size "$MAXB" --concurrency "$CONC"
    --requests "$REQS" --raw-images "$REQS" --warmup "$WARM" --skip-no-batching --no-synthetic-fallback
    --json "$OUT/serve_tensorrt.json")
  REPORT=(scripts/gpu_report.py --run-dir "$OUT" --out "$REPORT_OUT")
}

# ------------------------------------------------------------------------------------------ step runner
FAILED=()
: >"$OUT/steps.tsv"
step() {  # step NAME SECONDS COMMAND...: run bounded, log to OUT/NAME.log, record the outcome
  local name=$1 limit=$2 start=$SECONDS rc left
  shift 2
  left=$((DEADLINE - SECONDS - 30))
  [ "$name" = report ] && left=$((left + 30))
  if [ "$left" -lt 20 ]; then
    skip "$name" "out of time (--budget $BUDGET s)"
    FAILED+=("$name: out of time")
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  local status=ok
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status="timeout"; elif [ "$rc" != 0 ]; then status="failed (exit $rc)"; fi
  printf '%s\t%s\t%s\t\n' "$name" "$status" "$((SECONDS - start))" >>"$OUT/steps.tsv"
  [ "$status" = ok ] || FAILED+=("$name: $status")
  return 0
}
skip() {  # skip NAME REASON
  echo "== $1: skipped ($2)"
  printf '%s\t%s\t0\t%s\n' "$1" skipped "$2" >>"$OUT/steps.tsv"
}

# ------------------------------------------------------------------------------------------ 0. flags
REPORT_OUT=benchmarks/results/gpu
[ "$DRY" = 1 ] && REPORT_OUT=$OUT/gpu
gpu_values
build_commands
echo "== flags: the GPU command lines, parsed by each script's own parser"
train_side=(); serve_side=()
for cmd in TRAIN DDP LOSS TRAIN_R50 DDP_TRAIN EXPORT REPORT; do
  declare -n argv=$cmd; train_side+=("${argv[@]}" :::); unset -n argv
done
for cmd in PLACE_CUDA SERVE_CUDA PLACE_TRT SERVE_TRT; do
  declare -n argv=$cmd; serve_side+=("${argv[@]}" :::); unset -n argv
done
"$PY" scripts/check_args.py "${train_side[@]:0:${#train_side[@]}-1}" || FAILED+=("flags: see above")
"$GPU_PY" scripts/check_args.py "${serve_side[@]:0:${#serve_side[@]}-1}" || FAILED+=("flags: see above")
if [ ${#FAILED[@]} -gt 0 ]; then
  printf 'gpu_check: %s\n' "${FAILED[@]}" >&2
  exit 1
fi
echo "   all command lines parse"
if [ "$DRY" = 1 ]; then
  dry_values
  build_commands
fi
REQ_TORCH=(); REQ_ORT=()
[ "$REQUIRE" = 1 ] && REQ_TORCH=(--require torch-cuda) && REQ_ORT=(--require ort-cuda)

# ------------------------------------------------------------------------------------------ steps
step env-train 120 "$PY" scripts/gpu_env.py "${REQ_TORCH[@]}" --json "$OUT/env_train.json"
step env-serve 120 "$GPU_PY" scripts/gpu_env.py "${REQ_ORT[@]}" --json "$OUT/env_serve.json"
step train-amp 180 "$PY" "${TRAIN[@]}"
step ddp 180 "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 "${DDP[@]}"
step loss-inat 120 "$PY" "${LOSS[@]}"
grep -E '^(setup|inat-scale)' "$OUT/loss-inat.log" >"$OUT/loss_scale.txt" || true
step data 120 "$PY" "${SYN[@]}"
step train-r50 300 "$PY" "${TRAIN_R50[@]}"
step ddp-train 180 "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 "${DDP_TRAIN[@]}"
step export 240 "$PY" "${EXPORT[@]}"
step placement-cuda 120 "$GPU_PY" "${PLACE_CUDA[@]}"
step serve-cuda 300 "$GPU_PY" "${SERVE_CUDA[@]}"
if [ "$DRY" = 1 ]; then
  skip placement-tensorrt "dry run: TensorRT flags parsed above"
  skip serve-tensorrt "dry run: TensorRT flags parsed above"
elif "$GPU_PY" -c "import sys; from service.providers import tensorrt_libraries as t; sys.exit(t() is None)"; then
  step placement-tensorrt 420 "$GPU_PY" "${PLACE_TRT[@]}"
  step serve-tensorrt 420 "$GPU_PY" "${SERVE_TRT[@]}"
else
  skip placement-tensorrt "TensorRT (libnvinfer) not installed in $GPU_PY's environment; not shipped (docs/gpu.md)"
  skip serve-tensorrt "TensorRT not installed"
fi
REPORT_FLAGS=()
[ "$DRY" = 1 ] && REPORT_FLAGS=(--dry-run)
step report 60 "$PY" "${REPORT[@]}" "${REPORT_FLAGS[@]}"

if [ ${#FAILED[@]} -gt 0 ]; then
  echo "gpu_check FAILED (${#FAILED[@]} step(s)); logs in $OUT:" >&2
  printf '  %s\n' "${FAILED[@]}" >&2
  exit 1
fi
echo "gpu_check passed$([ "$DRY" = 1 ] && echo ' (dry run: CPU only, no GPU was used)'); page: $REPORT_OUT.md"
