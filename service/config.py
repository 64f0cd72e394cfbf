"""Service settings: environment variables ``RESCOM_*`` -> :class:`Settings` -> ``create_app(settings)``.

Nothing else in the service reads ``os.environ``. Every field can be set as ``RESCOM_<FIELD>`` (upper case), e.g.
``RESCOM_MAX_BATCH_SIZE=16`` or ``RESCOM_BATCH_SIZES=1,2,4,8,16``; the command line
(``python -m service --model-repository ... --port ...``) overrides the environment for the options it has.
"""

from __future__ import annotations

import math
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from rescom.label_shift import DEFAULT_ESTIMATOR, parse_estimator
from rescom.model_repository import MODEL_NAME_PATTERN

__all__ = ["Settings", "get_settings", "usable_cpus", "MODEL_NAME_PATTERN"]

PRIOR_KEYWORDS = ("uniform", "train", "adaptive")


def usable_cpus() -> int:
    """CPU cores this process may run on (affinity mask / container cpuset aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class Settings(BaseSettings):
    """All service options. Defaults are chosen for a small CPU box (2 cores) and work unchanged on a GPU.

    Batching follows Triton's dynamic batcher: a batch goes to the model as soon as it holds
    ``max_batch_size`` images, or when the oldest queued request has waited ``max_queue_delay_ms``; it is then
    padded up to the next size in ``batch_sizes`` (all of which are warmed up before the model reports ready).
    """

    model_config = SettingsConfigDict(
        env_prefix="RESCOM_", extra="ignore", protected_namespaces=(), validate_default=True
    )

    # --- what to serve, where
    model_repository: Path = Field(
        Path("models"), description="Triton-style model repository: NAME/N/model.onnx"
    )
    model: str | None = Field(
        None, description="serve only this model (default: every model in the repository)"
    )
    host: str = Field("127.0.0.1", description="bind address (0.0.0.0 inside a container)")
    port: int = Field(8000, ge=1, le=65535)
    grpc_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="also serve KServe v2 over gRPC on this port (same host; 0 = any free port); unset = off",
    )
    allow_model_control: bool = Field(
        False,
        description="allow Triton's repository load/unload calls (POST /v2/repository/models/NAME/load|unload); "
        "refused unless an API key is set too",
    )

    # --- dynamic batching
    max_batch_size: int = Field(
        32,
        ge=1,
        le=4096,
        description="cap on images per model call when set; unset, each model uses its config.pbtxt "
        "max_batch_size (else its rescom.json one)",
    )
    max_queue_delay_ms: float = Field(2.0, ge=0, le=10_000, description="longest wait for a batch to fill")
    batch_sizes: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [1, 2, 4, 8, 16, 32],
        description="padded batch sizes (each warmed up); sizes above max_batch_size are dropped, it is added",
    )
    pad_batches: Literal["auto", "always", "never"] = Field(
        "auto",
        description="pad each batch up to the next batch size: auto = on CUDA/TensorRT only (a new shape costs a "
        "kernel search there; on CPU padding only burns compute)",
    )
    max_queue_size: int = Field(256, ge=1, description="images allowed to wait; beyond it requests get 503")
    max_images_per_request: int = Field(64, ge=1, description="images in one request; beyond it 413")
    request_timeout_s: float = Field(
        10.0, gt=0, description="deadline while queued; expired requests get 504"
    )

    # --- input limits
    max_body_bytes: int = Field(16 * 2**20, ge=1024, description="request body limit (413 beyond it)")
    max_image_pixels: int = Field(
        25_000_000, ge=1, description="width*height limit per image, checked before decode"
    )
    max_decoded_bytes: int = Field(
        256 * 2**20,
        ge=2**20,
        description="decoded size of all images of one request (width*height*bytes per pixel of each image's "
        "mode, from the headers); beyond it 413 before anything is decoded",
    )

    # --- connection limits (enforced by the HTTP protocol, before routing, auth or any body read)
    max_request_line_bytes: int = Field(
        8192, ge=256, le=2**20, description="request target (path + query) limit; beyond it 414"
    )
    max_header_bytes: int = Field(
        65536, ge=1024, le=2**24, description="request line + all header lines limit; beyond it 431"
    )
    max_headers: int = Field(100, ge=8, le=10_000, description="header lines per request; beyond it 431")
    header_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="time to send the request line and headers; slower clients get 408"
    )
    body_timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="time to send the body once the headers are in (16 MiB at ~280 kB/s); then 408 and closed",
    )
    keep_alive_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="idle keep-alive connections are closed after this long"
    )
    max_connections: int = Field(
        1024, ge=1, le=1_000_000, description="open connections per process; beyond it 503 + Retry-After"
    )

    # --- ONNX Runtime
    providers: Literal["auto", "cpu", "cuda", "tensorrt"] = Field(
        "auto", description="auto = CUDA when this onnxruntime build and the machine have it, else CPU"
    )
    device_id: int = Field(0, ge=0, description="CUDA device")
    intra_op_threads: int | None = Field(
        None,
        ge=0,
        description="ORT threads per model call; default: usable cores / instances on CPU, 1 on GPU",
    )
    inter_op_threads: int = Field(1, ge=0, description="ORT inter-op threads (the graphs are sequential)")
    instances: int | None = Field(
        None,
        ge=1,
        le=16,
        description="model calls that may run at once (Triton's instance count); default: 2 on CPU (measured "
        "~1.3x the throughput of 1 instance x 2 threads on 2 cores), 1 on GPU",
    )
    ort_spinning: bool = Field(
        False,
        description="let idle ORT threads spin: faster small batches, but burns CPU that decoding needs",
    )
    trt_cache_dir: Path | None = Field(
        None,
        description="TensorRT engine cache, an absolute path (providers=tensorrt); unset or empty: "
        "$XDG_CACHE_HOME/rescom/tensorrt",
    )
    trt_fp16: bool = Field(False, description="TensorRT FP16 kernels (providers=tensorrt)")
    io_binding: bool = Field(
        True, description="CUDA/TensorRT: model calls through IO binding with pinned host buffers"
    )
    decode_threads: int | None = Field(
        None, ge=1, description="image decoding threads; default: usable cores"
    )

    # --- calibration
    default_prior: str | None = Field(
        None, description="prior when a request names none: uniform, train or adaptive (default: the model's)"
    )
    default_top_k: int = Field(5, ge=1, description="top_k when a request names none (capped at C)")
    adaptive_window: int = Field(
        2048, ge=16, le=1_000_000, description="recent logits kept for the adaptive prior"
    )
    adaptive_alpha: float = Field(
        2.0, ge=1.0, description="symmetric Dirichlet alpha of the EM M-step (1 = ML)"
    )
    adaptive_update_every: int = Field(64, ge=1, description="new images between two EM re-estimates")
    adaptive_estimator: str = Field(
        DEFAULT_ESTIMATOR,
        description="label-shift estimator of the adaptive prior: em, map_em, bbse or rlls, optionally +guard "
        "(bbse / rlls need calibration.confusion in rescom.json, else the default runs)",
    )

    # --- operations
    poll_interval_s: float = Field(5.0, ge=0, description="repository polling for new versions; 0 disables")
    api_key: SecretStr | None = Field(None, description="bearer token required on every endpoint but health")
    drain_timeout_s: float = Field(
        20.0,
        gt=0,
        description="on SIGTERM: longest wait for in-flight requests; those still running then get 503",
    )
    shutdown_delay_s: float = Field(
        5.0,
        ge=0,
        le=3600,
        description="on SIGTERM: keep serving this long with readiness 503 before the listener closes, so load "
        "balancers stop sending traffic first (Kubernetes: instead of a preStop sleep; 5 s covers endpoint "
        "removal reaching kube-proxy and ingress controllers, ~1-2 s, with margin); SIGINT skips it",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    access_log: bool = Field(False, description="uvicorn access log (request counts are in /metrics anyway)")
    protocol_fast_path: bool = Field(
        True,
        description="answer raw-body POST /predict from the connection protocol, without uvicorn's ASGI cycle "
        "(same checks and answers; off: through the ASGI fast path, for comparison)",
    )

    @field_validator("model_repository")
    @classmethod
    def _repository_exists(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(
                f"model repository {str(value)!r} is not a directory; export a model into it first "
                "(make export-digits) or point RESCOM_MODEL_REPOSITORY / --model-repository at one"
            )
        return value

    @field_validator("model")
    @classmethod
    def _model_name(cls, value: str | None) -> str | None:
        if value is not None and not MODEL_NAME_PATTERN.match(value):
            raise ValueError(f"model name {value!r} is not allowed: use letters, digits, '_', '-' or '.'")
        return value

    @field_validator("batch_sizes", mode="before")
    @classmethod
    def _split_sizes(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = [p for p in re.split(r"[,\s]+", value.strip().strip("[]")) if p]
            try:
                return [int(p) for p in parts]
            except ValueError:
                raise ValueError(
                    f"batch_sizes must be comma-separated positive integers, got {value!r}"
                ) from None
        return value

    @field_validator("batch_sizes")
    @classmethod
    def _check_sizes(cls, value: list[int]) -> list[int]:
        if not value or any(b < 1 for b in value):
            raise ValueError(f"batch_sizes must be positive integers, got {value}")
        return sorted(set(value))

    @field_validator("adaptive_estimator")
    @classmethod
    def _check_estimator(cls, value: str) -> str:
        parse_estimator(value)  # ValueError: one line naming the allowed estimators
        return value.strip().lower()

    @field_validator("default_prior")
    @classmethod
    def _prior_keyword(cls, value: str | None) -> str | None:
        if value is not None and value.lower() not in PRIOR_KEYWORDS:
            raise ValueError(f"default_prior must be one of {', '.join(PRIOR_KEYWORDS)}, got {value!r}")
        return None if value is None else value.lower()

    @field_validator("trt_cache_dir", mode="before")
    @classmethod
    def _cache_dir(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None  # RESCOM_TRT_CACHE_DIR="" means unset, never the working directory
        path = Path(value).expanduser()
        if not path.is_absolute():
            raise ValueError(f"trt_cache_dir must be an absolute path, got {str(value)!r}")
        return path

    @field_validator("api_key")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        if isinstance(value, SecretStr) and not value.get_secret_value():
            return None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.max_images_per_request > self.max_queue_size:
            raise ValueError(
                f"max_images_per_request ({self.max_images_per_request}) must not exceed max_queue_size "
                f"({self.max_queue_size}): such a request could never be queued"
            )
        if not math.isfinite(self.request_timeout_s) or not math.isfinite(self.max_queue_delay_ms):
            raise ValueError("request_timeout_s and max_queue_delay_ms must be finite")
        return self

    @property
    def buckets(self) -> tuple[int, ...]:
        """Padded batch sizes actually used: ``batch_sizes`` up to ``max_batch_size``, which is always one."""
        return tuple(
            sorted({b for b in self.batch_sizes if b <= self.max_batch_size} | {self.max_batch_size})
        )

    @property
    def resolved_decode_threads(self) -> int:
        """Size of the image decoding thread pool."""
        return self.decode_threads or usable_cpus()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, built once per process."""
    return Settings()
