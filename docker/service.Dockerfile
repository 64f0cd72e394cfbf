# ResCom serving image: FastAPI + ONNX Runtime, no torch, the bundled model repository baked in at /models.
#
#   docker build -f docker/service.Dockerfile -t rescom-serve:local .                       # CPU (onnxruntime)
#   docker build -f docker/service.Dockerfile --build-arg RUNTIME=gpu -t rescom-serve:local-gpu .
#   docker run --rm -p 127.0.0.1:8000:8000 rescom-serve:local
#
# RUNTIME=cpu installs docker/requirements-serve.txt (plain onnxruntime), RUNTIME=gpu installs
# docker/requirements-serve-gpu.txt (onnxruntime-gpu[cuda,cudnn], CUDA 13 + cuDNN 9 as nvidia-* wheels, so the
# same python:3.11-slim base works and only the NVIDIA driver comes from the host). Never both.
# Everything is installed from wheels: the base needs no compiler and no Python headers.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG RUNTIME=cpu
ARG RESCOM_UID=10001

# ORT_DISABLE_TELEMETRY: onnxruntime >= 1.32 on Linux otherwise starts its 1DS telemetry at import and keeps a
# device-id database under ~/.cache (and warns on a read-only root filesystem).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    ORT_DISABLE_TELEMETRY=1

# Unprivileged user; it owns /models so that a named volume mounted there is seeded with the same owner and
# the one-shot training job (same UID) can add versions to it.
RUN groupadd --gid "${RESCOM_UID}" rescom \
 && useradd --uid "${RESCOM_UID}" --gid rescom --create-home --home-dir /home/rescom \
        --shell /usr/sbin/nologin rescom

# 1. Dependencies only (exact pins): this layer is rebuilt only when a lock file or RUNTIME changes.
COPY docker/requirements-serve.txt docker/requirements-serve-gpu.txt /tmp/requirements/
RUN case "${RUNTIME}" in \
      cpu) lock=/tmp/requirements/requirements-serve.txt ;; \
      gpu) lock=/tmp/requirements/requirements-serve-gpu.txt ;; \
      *) echo "RUNTIME must be cpu or gpu, got '${RUNTIME}'" >&2; exit 1 ;; \
    esac \
 && python -m pip install --no-cache-dir --only-binary=:all: -r "${lock}" \
 && rm -rf /tmp/requirements

# 2. The project itself, without dependencies. Only the torch-free packages are copied: rescom (of which the
#    service imports rescom.calibration / rescom.preprocess / rescom.version) and service.
WORKDIR /opt/rescom/src
COPY pyproject.toml README* ./
COPY rescom/ rescom/
COPY service/ service/
COPY docker/verify_serve_image.py /opt/rescom/verify_serve_image.py
RUN python -m pip install --no-cache-dir --no-deps . \
 && python -m pip check \
 && python -c "import service.main, sys; assert 'torch' not in sys.modules" \
 && python /opt/rescom/verify_serve_image.py "${RUNTIME}" \
 && rm -rf /opt/rescom/src build

# 3. The bundled default model repository (models/digits_lt/{config.pbtxt,1/model.onnx,1/rescom.json}).
#    MODEL_REPOSITORY_DIR bakes another repository instead (a folder inside the build context).
ARG MODEL_REPOSITORY_DIR=models
COPY --chown=${RESCOM_UID}:${RESCOM_UID} ${MODEL_REPOSITORY_DIR}/ /models/

WORKDIR /home/rescom
# Inside the container the service must listen on all interfaces; publishing the port is what decides who can
# reach it (compose.yaml publishes on 127.0.0.1 only by default).
ENV RESCOM_MODEL_REPOSITORY=/models \
    RESCOM_HOST=0.0.0.0 \
    RESCOM_PORT=8000
LABEL org.opencontainers.image.title="rescom-serve" \
      org.opencontainers.image.description="ResCom long-tailed image classifier API (ONNX Runtime, ${RUNTIME})" \
      org.opencontainers.image.licenses="Apache-2.0"

USER ${RESCOM_UID}:${RESCOM_UID}
EXPOSE 8000 8001
# /health/ready is 503 until every model is loaded and warmed; slim images have no curl, so use Python.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('RESCOM_PORT', '8000'), timeout=2)"]
# uvicorn runs as PID 1 and gets SIGTERM directly: readiness turns 503, in-flight requests drain for up to
# RESCOM_DRAIN_TIMEOUT_S, then it exits. Give `docker stop -t` / compose stop_grace_period more than that.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "service"]
