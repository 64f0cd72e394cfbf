#!/bin/sh
# One-shot job of the `train` compose profile: train a recipe, then export best.pt as a NEW version of the
# model in the shared model repository, where the running API picks it up by polling (hot reload).
#
#   TRAIN_CONFIG (training/configs/digits_lt.yaml)  MODEL_NAME (digits_lt)  RUNS_DIR (/runs)
#   RESCOM_MODEL_REPOSITORY (/models)               extra arguments go to training/train.py
#   TRAIN_DEVICE (unset: train.py's auto; compose.gpu.yaml sets cuda, so a missing GPU is an error, not a CPU run)
set -eu
config=${TRAIN_CONFIG:-training/configs/digits_lt.yaml}
name=${MODEL_NAME:-digits_lt}
repo=${RESCOM_MODEL_REPOSITORY:-/models}
run_dir=${RUNS_DIR:-/runs}/${name}-$(date -u +%Y%m%dT%H%M%SZ)

echo "train_and_export: training ${config} -> ${run_dir}"
python training/train.py --config "${config}" --output-dir "${run_dir}" --no-progress \
  ${TRAIN_DEVICE:+--device "${TRAIN_DEVICE}"} "$@"
echo "train_and_export: exporting ${run_dir}/best.pt -> ${repo}/${name}/<next version>"
python export/to_onnx.py --checkpoint "${run_dir}/best.pt" --model-repository "${repo}" --name "${name}"
echo "train_and_export: done; versions now in ${repo}/${name}:"
ls "${repo}/${name}"
