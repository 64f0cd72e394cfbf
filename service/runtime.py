"""ONNX Runtime sessions: the only module of the service that imports ``onnxruntime``.

:func:`load_runtime` opens a version's graph, checks it against its ``rescom.json`` (:class:`ModelSpec`), picks
the execution providers, and warms up every padded batch size before the model may report ready.

Provider choice (docs/serving.md §3.2): ``onnxruntime-gpu`` lists the CUDA provider even on a machine without a
GPU and then silently builds a CPU session, so the provider that is reported everywhere is the one the session
*actually* uses (``session.get_providers()[0]``). When CUDA or TensorRT was asked for explicitly, a session
that fell back to the CPU is refused.

Each batch is padded up to the next size in ``buckets`` (1, 2, 4, ... by default): on CUDA every new input shape
costs an algorithm search, and with a fixed set of shapes all of them are warmed up front.

On CUDA/TensorRT (``service.providers`` builds the provider options, including TensorRT's optimisation profile
and engine cache): calls go through IO binding with pinned host buffers (``service.iobinding``); ONNX
Runtime's warnings are shown (severity 2, e.g. "Some nodes were not assigned to the preferred execution
providers"), and the warm-up is profiled so that every node that ran on the CPU is reported by name
(``service.placement``).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from rescom.model_repository import METADATA_FILE
from service import providers as prov
from service.config import usable_cpus
from service.iobinding import BoundRunner
from service.model_spec import ModelSpec
from service.placement import Placement, read_placement

__all__ = ["ModelLoadError", "ModelRuntime", "RuntimeOptions", "load_runtime"]

log = logging.getLogger("rescom.service.runtime")

CPU, CUDA, TENSORRT = prov.CPU, prov.CUDA, prov.TENSORRT
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
        trt_cache_dir: TensorRT engine and timing cache root (``None``: ``$XDG_CACHE_HOME/rescom/tensorrt``).
        trt_fp16: TensorRT FP16 kernels.
        io_binding: run through IO binding (pinned host buffers on GPUs): ``None`` = on CUDA/TensorRT only,
            ``True`` = also on the CPU, ``False`` = never.
        profile_warmup: profile the warm-up and report the node placement: ``None`` = on CUDA/TensorRT only.
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
    io_binding: bool | None = None
    profile_warmup: bool | None = None


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
        io_binding: calls go through IO binding (GPU providers); ``pinned``: its host buffers are page-locked.

    Args:
        spec: the validated metadata of the version.
        session: the ONNX Runtime session the version runs in.
        max_batch_size: rows per call (see ``max_batch_size`` above).
        buckets: batch sizes warmed up and padded to (see ``buckets`` above).
        intra_op_threads: ORT threads per call.
        pad: pad each batch up to the next bucket.
        instances: model calls that may run at once.
        binder: runs calls through IO binding (GPU providers); ``None``: plain ``session.run``.
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
        binder: BoundRunner | None = None,
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
        self._binder = binder
        self.placement: Placement | None = None  # node placement seen in the (profiled) GPU warm-up

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
        if self._binder is not None:
            return self._binder.run(images, bucket)  # pads inside its bound buffer
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
                y = self.run(x)  # the serving path itself (IO binding on GPUs)
            if y.shape != (b, self.spec.num_classes):
                raise ModelLoadError(
                    f"{self.spec.name}/{self.spec.version}: output 'logits' has shape "
                    f"{list(y.shape)} for a batch of {b}; expected [{b}, {self.spec.num_classes}]"
                )
            if y.dtype != np.float32 or not np.all(np.isfinite(y)):
                raise ModelLoadError(
                    f"{self.spec.name}/{self.spec.version}: output 'logits' is not finite float32"
                )

    @property
    def io_binding(self) -> bool:
        """Whether calls go through IO binding."""
        return self._binder is not None

    @property
    def pinned(self) -> bool:
        """Whether the IO-binding host buffers are page-locked."""
        return self._binder is not None and self._binder.pinned

    def close(self) -> None:
        """Drop the session (its memory is freed once no batch is using it)."""
        self._session = None
        self._binder = None


def _instances_and_threads(options: RuntimeOptions, on_gpu: bool) -> tuple[int, int]:
    """Resolve the defaults: 2 instances x (cores / 2) threads on CPU, 1 x 1 on a GPU."""
    instances = options.instances or (1 if on_gpu else min(2, usable_cpus()))
    threads = options.intra_op_threads or (1 if on_gpu else max(1, usable_cpus() // instances))
    return instances, threads


def _trt_cache_dir(spec: ModelSpec, options: RuntimeOptions) -> Path | None:
    """``<cache root>/<model>/<version>``, created; ``None`` (with a warning) when it cannot be written."""
    root = prov.trt_cache_root(options.trt_cache_dir)
    folder = root / spec.name / str(spec.version)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        log.warning(
            "%s/%s: TensorRT engine cache %s cannot be created (%s); every start builds the engine "
            "(set RESCOM_TRT_CACHE_DIR to a writable volume)",
            spec.name,
            spec.version,
            folder,
            err.strerror or err,
        )
        return None
    return folder


def _providers(spec: ModelSpec, options: RuntimeOptions) -> list[prov.ProviderEntry]:
    """The provider list for ``options.providers`` (see :mod:`service.providers`)."""
    available = ort.get_available_providers()
    trt = library = None
    if options.providers == "tensorrt" and prov.TENSORRT in available:
        library = prov.tensorrt_libraries()
        if library is not None:
            max_batch = min(options.max_batch_size, spec.max_batch_size)
            trt = prov.tensorrt_options(
                options.device_id,
                options.trt_fp16,
                _trt_cache_dir(spec, options),
                spec.input.name,
                spec.image_shape,
                max_batch,
            )
    try:
        return prov.provider_list(options.providers, available, options.device_id, trt, library)
    except prov.ProviderError as err:
        raise ModelLoadError(f"{spec.name}/{spec.version}: {err}") from None


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


def _session_options(
    options: RuntimeOptions, threads: int, on_gpu: bool, profile_dir: str | None
) -> ort.SessionOptions:
    """Session options: threads, no spinning by default, ORT warnings and a profiled warm-up on GPUs."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = options.inter_op_threads
    # Spinning threads would burn the cores that decoding and HTTP need between batches (serving.md §3.7).
    spin = "1" if options.spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    # On a GPU, ORT's warnings matter (nodes assigned to the CPU, memcpy nodes, missing libraries).
    so.log_severity_level = 2 if on_gpu else 3
    if profile_dir is not None:  # the warm-up is profiled to learn where every node ran (ended after it)
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(profile_dir) / "warmup")
    return so


def _open_session(spec: ModelSpec, so: ort.SessionOptions, providers: list) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(spec.onnx_path), sess_options=so, providers=providers)
    except Exception as err:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        reason = str(err).replace(str(spec.onnx_path), spec.onnx_path.name).strip().splitlines()[0][:300]
        raise ModelLoadError(
            f"{spec.name}/{spec.version}: onnxruntime cannot load the graph: {reason}"
        ) from None


def load_runtime(spec: ModelSpec, options: RuntimeOptions) -> ModelRuntime:
    """Open, check and warm up one model version (blocking; call it from a worker thread).

    Raises:
        ModelLoadError: with a message naming the version and what is wrong.
    """
    providers = _providers(spec, options)
    on_gpu = providers[0] != CPU
    if on_gpu and hasattr(ort, "preload_dlls"):
        try:  # find CUDA/cuDNN from the nvidia-* wheels (ORT >= 1.21)
            ort.preload_dlls()
        except Exception as err:  # noqa: BLE001 (best effort; the session creation below reports the real error)
            log.debug("onnxruntime.preload_dlls() failed: %s", err)
    profile = on_gpu if options.profile_warmup is None else options.profile_warmup
    profiling = (
        tempfile.TemporaryDirectory(prefix="rescom-ort-profile-", ignore_cleanup_errors=True)
        if profile
        else contextlib.nullcontext(None)
    )
    with profiling as profile_dir:
        instances, threads = _instances_and_threads(options, on_gpu)
        so = _session_options(options, threads, on_gpu, profile_dir)
        session = _open_session(spec, so, providers)
        actual = session.get_providers()[0]
        requested = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
        if actual != requested:
            if options.providers in ("cuda", "tensorrt"):
                raise ModelLoadError(
                    f"{spec.name}/{spec.version}: {requested} was required (RESCOM_PROVIDERS={options.providers}) "
                    f"but onnxruntime fell back to {actual}; check the GPU, the driver and the CUDA/cuDNN libraries"
                )
            log.warning("%s/%s: %s is unavailable, running on %s", spec.name, spec.version, requested, actual)
            if actual == CPU:
                instances, cpu_threads = _instances_and_threads(options, on_gpu=False)
                if cpu_threads != threads:
                    threads = cpu_threads
                    so.intra_op_num_threads = threads
                    session = _open_session(spec, so, [CPU])
        _check_graph(spec, session)
        max_batch = min(options.max_batch_size, spec.max_batch_size)
        buckets = tuple(sorted({b for b in options.batch_sizes if b <= max_batch} | {max_batch}))
        provider = session.get_providers()[0]
        pad = options.pad_batches == "always" or (options.pad_batches == "auto" and provider != CPU)
        binder = None
        if options.io_binding or (options.io_binding is None and provider != CPU):
            binder = BoundRunner(
                session,
                spec.input.name,
                spec.output.name,
                spec.image_shape,
                spec.num_classes,
                provider != CPU,
            )
        runtime = ModelRuntime(
            spec, session, max_batch, buckets, threads, pad=pad, instances=instances, binder=binder
        )
        runtime.warmup()
        if profile_dir is not None:
            runtime.placement = _report_placement(spec, session)
    return runtime


def _report_placement(spec: ModelSpec, session: ort.InferenceSession) -> Placement | None:
    """End the warm-up profile and log the nodes that ran on the CPU (warning for real work)."""
    try:
        placement = read_placement(session.end_profiling())
    except (ValueError, RuntimeError) as err:
        log.warning("%s/%s: node placement unknown (%s)", spec.name, spec.version, err)
        return None
    counts = ", ".join(f"{p}: {n}" for p, n in sorted(placement.count_by_provider().items()))
    log.info("%s/%s: nodes per provider in the warm-up: %s", spec.name, spec.version, counts)
    heavy = placement.fallbacks()
    if heavy:
        log.warning(
            "%s/%s: %d node(s) fell back to the CPU: %s",
            spec.name,
            spec.version,
            len(heavy),
            placement.describe(heavy),
        )
    return placement
