# ResCom training + export image (torch 2.14.1, torchvision 0.29.1, onnx, onnxruntime): `pip install .[export]`.
# Used by the `train` profile of compose.yaml, which trains a recipe and exports it as a new model version
# into the shared model repository volume.
#
#   docker build -f docker/train.Dockerfile -t rescom-train:local .
#   docker build -f docker/train.Dockerfile --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu \
#       -t rescom-train:local-cpu .                                   # CPU-only torch wheels, much smaller
#
# Size: torch 2.14.1 from PyPI is the CUDA 13 build and pulls the nvidia-* runtime wheels (cuDNN, cuBLAS,
# NCCL, ...): a ~3 GB download and an image of roughly 6-8 GB, which also runs on CPU-only hosts. With the
# CPU-only torch index it is well under 1.5 GB. CI does not build this image (multi-GB download inside a build);
# it is linted (hadolint) and validated (docker compose config) by scripts/lint_containers.sh.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# Extra package index for torch/torchvision only, e.g. https://download.pytorch.org/whl/cpu (empty: PyPI).
ARG TORCH_INDEX_URL=""
ARG RESCOM_UID=10001

# ORT_DISABLE_TELEMETRY: onnxruntime >= 1.32 on Linux otherwise starts its 1DS telemetry at import and keeps a
# device-id database under ~/.cache (and warns on a read-only root filesystem).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    ORT_DISABLE_TELEMETRY=1

# Same UID as the serving image: the model repository volume is owned by it, the job adds versions to it.
RUN groupadd --gid "${RESCOM_UID}" rescom \
 && useradd --uid "${RESCOM_UID}" --gid rescom --create-home --home-dir /home/rescom \
        --shell /usr/sbin/nologin rescom \
 && mkdir -p /models /runs /data \
 && chown "${RESCOM_UID}:${RESCOM_UID}" /models /runs /data

# 1. torch + torchvision first: the heaviest layer, rebuilt only when the constraints or the index change.
COPY docker/constraints-train.txt /tmp/constraints-train.txt
RUN python -m pip install --no-cache-dir --only-binary=:all: -c /tmp/constraints-train.txt \
        ${TORCH_INDEX_URL:+--extra-index-url "${TORCH_INDEX_URL}"} \
        "torch==2.14.1" "torchvision==0.29.1"
# The other dependencies of the train/export extras (same pins), so that a source change below reinstalls
# nothing but the project itself. (A separate layer on purpose: torch's stays cached when this list changes.)
# hadolint ignore=DL3059
RUN python -m pip install --no-cache-dir --only-binary=:all: -c /tmp/constraints-train.txt \
        numpy onnx onnxruntime pillow pyyaml scikit-learn tqdm

# 2. The project with the export extra; anything pyproject.toml lists beyond the layer above is still installed
#    here, pinned by the same constraints. The scripts run from the source tree (they put the repository root on sys.path).
WORKDIR /opt/rescom
COPY pyproject.toml README* ./
COPY rescom/ rescom/
COPY training/ training/
COPY export/ export/
COPY scripts/ scripts/
COPY docker/train_and_export.sh /usr/local/bin/train_and_export
RUN python -m pip install --no-cache-dir --only-binary=:all: -c /tmp/constraints-train.txt \
        ${TORCH_INDEX_URL:+--extra-index-url "${TORCH_INDEX_URL}"} ".[export]" \
 && python -m pip check \
 && rm -rf build ./*.egg-info /tmp/constraints-train.txt \
 && python -c "import torch, torchvision, onnx, onnxruntime; print('torch', torch.__version__, 'onnx', onnx.__version__)"

ENV RESCOM_MODEL_REPOSITORY=/models \
    RUNS_DIR=/runs
USER ${RESCOM_UID}:${RESCOM_UID}
# Arguments go to training/train.py: `docker compose --profile train run --rm train --epochs 5 optim.lr=0.1`.
ENTRYPOINT ["train_and_export"]
CMD []
