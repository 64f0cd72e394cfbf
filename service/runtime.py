"""ONNX Runtime sessions: the only module of the service that imports ``onnxruntime``.

:func:`load_runtime` opens a version's graph, checks it against its ``rescom.json`` (:class:`ModelSpec`), picks
the execution providers, and warms up every padded batch size before the model may report ready.

Provider choice (docs/serving.md §3.2): ``onnxruntime-gpu`` lists the CUDA provider even on a machine without a
GPU and then silently builds a CPU session, so the provider that is reported everywhere is the one the session
*actually* uses (``session.get_providers()[0]``). When CUDA or TensorRT was asked for explicitly, a session
that fell back to the CPU is refused.

Each batch is padded up to the next size in ``buckets`` (1, 2, 4, ... by default): on CUDA every new input shape
costs an algorithm search, and with a fixed set of shapes all of them are warmed up front.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from rescom.model_repository import METADATA_FILE
from service.config import usable_cpus
from service.repository import ModelSpec

__all__ = ["ModelLoadError", "ModelRuntime", "RuntimeOptions", "load_runtime", "onnxruntime_version"]

log = logging.getLogger("rescom.service.runtime")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
_ORT_TYPES = {"UINT8": "tensor(uint8)", "FP32": "tensor(float)"}


class ModelLoadError(RuntimeError):
    """The graph cannot be served: unreadable, inconsistent with its metadata, or on the wrong provider."""


@dataclass(frozen=True)
class RuntimeOptions:
    """How sessions are built (from :class:`service.config.Settings`).

    Attributes:
        providers: ``auto``, ``cpu``, ``cuda`` or ``tensorrt``.
        device_id: CUDA device.
        intra_op_threads: ORT intra-op threads; ``None`` = usable cores / ``instances`` on CPU, 1 on GPU.
        instances: model calls that may run at once; ``None`` = 2 on CPU (1 on a single core), 1 on GPU.
        inter_op_threads: ORT inter-op threads.
        spinning: let idle ORT threads spin (lower latency per call, more CPU burnt).
        max_batch_size: the service's batch limit (the model's own limit may be lower).
        batch_sizes: padded batch sizes to use and warm up.
        pad_batches: ``auto`` (pad on GPU providers only), ``always`` or ``never``.
        trt_cache_dir: TensorRT engine and timing cache folder.
        trt_fp16: TensorRT FP16 kernels.
    """

    providers: str = "auto"
    device_id: int = 0
    intra_op_threads: int | None = None
    inter_op_threads: int = 1
    instances: int | None = None
    spinning: bool = False
    max_batch_size: int = 32
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    pad_batches: str = "auto"
    trt_cache_dir: Path | None = None
    trt_fp16: bool = False


def onnxruntime_version() -> str:
    """The installed ONNX Runtime version."""
    return ort.__version__


class ModelRuntime:
    """One model version in one ``InferenceSession``; :meth:`run` is what the batcher calls.

    Attributes:
        spec: the validated metadata.
        provider: the execution provider the session really runs on (e.g. ``CPUExecutionProvider``).
        max_batch_size: rows per call, ``min(service setting, model's max_batch_size)``.
        buckets: batch sizes warmed up (and padded to when ``pad`` is true), ascending, the last equal to
            ``max_batch_size``.
        intra_op_threads: ORT threads used per call.
        pad: pad each batch up to the next bucket.
        instances: model calls that may run at once (the batcher's workers).
    """

    def __init__(
        self,
        spec: ModelSpec,
        session: ort.InferenceSession,
        max_batch_size: int,
        buckets: tuple[int, ...],
        intra_op_threads: int,
        pad: bool = True,
        instances: int = 1,
    ) -> None:
        self.spec = spec
        self._session = session
        self.provider: str = session.get_providers()[0]
        self.max_batch_size = max_batch_size
        self.buckets = buckets
        self.intra_op_threads = intra_op_threads
        self.pad = pad
        self.instances = instances
        self._input = spec.input.name
        self._outputs = [spec.output.name]

    def run(self, images: np.ndarray) -> np.ndarray:
        """Logits for a batch: uint8 ``[n, crop, crop, 3]`` -> float32 ``[n, C]`` (padded to a bucket when ``pad``).

        Raises:
            ValueError: ``n`` is 0 or above ``max_batch_size``, or the images have the wrong shape or dtype.
        """
        n = images.shape[0]
        if not 1 <= n <= self.max_batch_size:
            raise ValueError(f"batch of {n} rows; allowed 1..{self.max_batch_size}")
        if images.dtype != np.uint8 or images.shape[1:] != self.spec.image_shape:
            raise ValueError(
                f"expected uint8 [n, {', '.join(map(str, self.spec.image_shape))}], got "
                f"{images.dtype} {list(images.shape)}"
            )
        bucket = self.bucket_for(n) if self.pad else n
        if bucket != n:
            padded = np.zeros((bucket, *images.shape[1:]), dtype=np.uint8)  # [bucket, H, W, 3]
            padded[:n] = images
            images = padded
        logits = self._session.run(self._outputs, {self._input: images})[0]  # [bucket, C]
        return logits[:n]

    def bucket_for(self, n: int) -> int:
        """The smallest padded batch size that holds ``n`` rows."""
        if not 1 <= n <= self.max_batch_size:
            raise ValueError(f"batch of {n} rows; allowed 1..{self.max_batch_size}")
        for b in self.buckets:
            if b >= n:
                return b
        return self.max_batch_size  # unreachable: the last bucket is max_batch_size

    def warmup(self) -> None:
        """Run every bucket once (twice on GPUs, where the first call also tunes kernels) and check the output.

        Raises:
            ModelLoadError: the graph's output does not have ``C`` columns or is not finite.
        """
        rounds = 1 if self.provider == CPU else 2
        for b in self.buckets:
            x = np.zeros((b, *self.spec.image_shape), dtype=np.uint8)
            for _ in range(rounds):
                y = self._session.run(self._outputs, {self._input: x})[0]
            if y.shape != (b, self.spec.num_classes):
                raise ModelLoadError(
                    f"{self.spec.name}/{self.spec.version}: output 'logits' has shape "
                    f"{list(y.shape)} for a batch of {b}; expected [{b}, {self.spec.num_classes}]"
                )
            if y.dtype != np.float32 or not np.all(np.isfinite(y)):
                raise ModelLoadError(
                    f"{self.spec.name}/{self.spec.version}: output 'logits' is not finite float32"
                )

    def close(self) -> None:
        """Drop the session (its memory is freed once no batch is using it)."""
        self._session = None  # type: ignore[assignment]


def _instances_and_threads(options: RuntimeOptions, on_gpu: bool) -> tuple[int, int]:
    """Resolve the defaults: 2 instances x (cores / 2) threads on CPU, 1 x 1 on a GPU."""
    instances = options.instances or (1 if on_gpu else min(2, usable_cpus()))
    threads = options.intra_op_threads or (1 if on_gpu else max(1, usable_cpus() // instances))
    return instances, threads


def _providers(options: RuntimeOptions) -> list[str | tuple[str, dict[str, str]]]:
    available = ort.get_available_providers()
    want = options.providers
    if want == "cpu":
        return [CPU]
    cuda_options = {
        "device_id": str(options.device_id),
        # Every bucket is warmed up, so the search runs once per shape; HEURISTIC keeps (re)loads quick.
        "cudnn_conv_algo_search": "HEURISTIC",
        "arena_extend_strategy": "kSameAsRequested",
        "do_copy_in_default_stream": "1",
    }
    if want in ("cuda", "tensorrt") and CUDA not in available:
        raise ModelLoadError(
            f"providers={want} but this onnxruntime build has no CUDA provider (available: {', '.join(available)}); "
            "install onnxruntime-gpu (never next to onnxruntime) or use RESCOM_PROVIDERS=auto|cpu"
        )
    if want == "tensorrt":
        if TENSORRT not in available:
            raise ModelLoadError(
                f"providers=tensorrt but this onnxruntime build has no TensorRT provider "
                f"(available: {', '.join(available)})"
            )
        trt: dict[str, str] = {
            "device_id": str(options.device_id),
            "trt_fp16_enable": str(int(options.trt_fp16)),
        }
        if options.trt_cache_dir is not None:
            options.trt_cache_dir.mkdir(parents=True, exist_ok=True)
            trt.update(
                trt_engine_cache_enable="1",
                trt_engine_cache_path=str(options.trt_cache_dir),
                trt_timing_cache_enable="1",
                trt_timing_cache_path=str(options.trt_cache_dir),
            )
        return [(TENSORRT, trt), (CUDA, cuda_options), CPU]
    if CUDA in available:  # cuda, or auto on a GPU build
        return [(CUDA, cuda_options), CPU]
    return [CPU]


def _check_graph(spec: ModelSpec, session: ort.InferenceSession) -> None:
    """Compare the graph's input and output with the metadata (name, dtype, static dims)."""
    where = f"{spec.name}/{spec.version}/{spec.onnx_path.name}"
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    inp = inputs.get(spec.input.name)
    if inp is None:
        raise ModelLoadError(f"{where}: the graph has no input {spec.input.name!r} (it has {sorted(inputs)})")
    if len(inputs) != 1:
        raise ModelLoadError(f"{where}: the graph must have exactly one input, it has {sorted(inputs)}")
    out = outputs.get(spec.output.name)
    if out is None:
        raise ModelLoadError(
            f"{where}: the graph has no output {spec.output.name!r} (it has {sorted(outputs)})"
        )
    for declared, actual in ((spec.input, inp), (spec.output, out)):
        if actual.type != _ORT_TYPES[declared.datatype]:
            raise ModelLoadError(
                f"{where}: {declared.name!r} is {actual.type} in the graph, {declared.datatype} in "
                f"{METADATA_FILE}"
            )
        if len(actual.shape) != len(declared.shape):
            raise ModelLoadError(
                f"{where}: {declared.name!r} has rank {len(actual.shape)} in the graph, "
                f"{len(declared.shape)} in rescom.json"
            )
        if isinstance(actual.shape[0], int) and actual.shape[0] > 0:
            raise ModelLoadError(
                f"{where}: {declared.name!r} has a fixed batch axis ({actual.shape[0]}); export "
                "it with a dynamic one"
            )
        for axis, (a, d) in enumerate(zip(actual.shape[1:], declared.shape[1:], strict=True), start=1):
            if isinstance(a, int) and a > 0 and a != d:
                raise ModelLoadError(
                    f"{where}: {declared.name!r} axis {axis} is {a} in the graph, {d} in rescom.json"
                )


def load_runtime(spec: ModelSpec, options: RuntimeOptions) -> ModelRuntime:
    """Open, check and warm up one model version (blocking; call it from a worker thread).

    Raises:
        ModelLoadError: with a message naming the version and what is wrong.
    """
    providers = _providers(options)
    on_gpu = providers[0] != CPU
    instances, threads = _instances_and_threads(options, on_gpu)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = options.inter_op_threads
    # Spinning threads would burn the cores that decoding and HTTP need between batches (serving.md §3.7).
    spin = "1" if options.spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    so.log_severity_level = 3  # errors only; fallbacks are reported by our own log lines
    if on_gpu and hasattr(ort, "preload_dlls"):
        try:  # find CUDA/cuDNN from the nvidia-* wheels (ORT >= 1.21)
            ort.preload_dlls()
        except Exception as err:  # noqa: BLE001 (best effort; the session creation below reports the real error)
            log.debug("onnxruntime.preload_dlls() failed: %s", err)
    try:
        session = ort.InferenceSession(str(spec.onnx_path), sess_options=so, providers=providers)
    except Exception as err:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        reason = str(err).replace(str(spec.onnx_path), spec.onnx_path.name).strip().splitlines()[0][:300]
        raise ModelLoadError(
            f"{spec.name}/{spec.version}: onnxruntime cannot load the graph: {reason}"
        ) from None
    actual = session.get_providers()[0]
    requested = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    if actual != requested:
        if options.providers in ("cuda", "tensorrt"):
            raise ModelLoadError(
                f"{spec.name}/{spec.version}: {requested} was required (RESCOM_PROVIDERS={options.providers}) but "
                f"onnxruntime fell back to {actual}; check the GPU, the driver and the CUDA/cuDNN libraries"
            )
        log.warning("%s/%s: %s is unavailable, running on %s", spec.name, spec.version, requested, actual)
        if actual == CPU:
            instances, cpu_threads = _instances_and_threads(options, on_gpu=False)
            if cpu_threads != threads:
                threads = cpu_threads
                so.intra_op_num_threads = threads
                session = ort.InferenceSession(str(spec.onnx_path), sess_options=so, providers=[CPU])
    _check_graph(spec, session)
    max_batch = min(options.max_batch_size, spec.max_batch_size)
    buckets = tuple(sorted({b for b in options.batch_sizes if b <= max_batch} | {max_batch}))
    provider = session.get_providers()[0]
    pad = options.pad_batches == "always" or (options.pad_batches == "auto" and provider != CPU)
    runtime = ModelRuntime(spec, session, max_batch, buckets, threads, pad=pad, instances=instances)
    runtime.warmup()
    return runtime
