"""Execution-provider list and provider options for ONNX Runtime (CPU, CUDA, TensorRT); no session is opened.

Pure functions of the settings, the model's input and the providers the installed onnxruntime lists, so that
every rule can be tested on a machine without a GPU:

- ``cpu``: ``[CPU]``; ``auto``: CUDA first when this onnxruntime build has it; ``cuda``/``tensorrt``: refused
  with one line when the build lacks it.
- CUDA options (documented ONNX Runtime CUDA EP options): the device, a heuristic cuDNN algorithm search
  (every padded batch size is warmed up anyway), an arena that grows by what is asked, copies in the default
  stream.
- TensorRT: ``onnxruntime-gpu`` lists ``TensorrtExecutionProvider`` even when the TensorRT libraries are
  missing, and then silently runs on CUDA. The rescom GPU image does not ship TensorRT (docs/gpu.md), so
  ``tensorrt`` is refused up front, in one line, unless ``libnvinfer`` can be loaded. When it can: one
  optimisation profile covering batch 1..max (min 1, opt = max = the largest padded batch), so the warm-up of
  1, 2, 4, ... builds ONE engine instead of one per shape; engine and timing caches under
  ``<cache>/<model>/<version>`` (see :func:`trt_cache_root` for where ``<cache>`` is).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "CPU",
    "CUDA",
    "TENSORRT",
    "ProviderError",
    "cuda_options",
    "load_shared_library",
    "provider_list",
    "tensorrt_libraries",
    "tensorrt_options",
    "trt_cache_root",
]

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
NVINFER_SONAMES = ("libnvinfer.so.10", "libnvinfer.so")

ProviderEntry = str | tuple[str, dict[str, str]]


class ProviderError(ValueError):
    """The requested providers cannot be used here (one line: what is missing and what to use instead)."""


def cuda_options(device_id: int) -> dict[str, str]:
    """CUDA execution provider options."""
    return {
        "device_id": str(device_id),
        "cudnn_conv_algo_search": "HEURISTIC",  # every bucket is warmed up; HEURISTIC keeps (re)loads quick
        "arena_extend_strategy": "kSameAsRequested",
        "do_copy_in_default_stream": "1",
    }


def trt_cache_root(setting: Path | None, environ: dict[str, str] | None = None) -> Path:
    """Where TensorRT engines are cached: the setting, else ``$XDG_CACHE_HOME/rescom/tensorrt``.

    Rules: ``RESCOM_TRT_CACHE_DIR`` unset or empty -> the default (never the working directory); ``~`` is
    expanded; a relative path is refused (it would depend on where the service was started).

    Raises:
        ProviderError: a relative path.
    """
    env = os.environ if environ is None else environ
    if setting is None:
        base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or "~").expanduser() / ".cache")
        return Path(base) / "rescom" / "tensorrt"
    path = Path(setting).expanduser()
    if not path.is_absolute():
        raise ProviderError(f"RESCOM_TRT_CACHE_DIR must be an absolute path, got {str(setting)!r}")
    return path


def tensorrt_options(
    device_id: int,
    fp16: bool,
    cache_dir: Path | None,
    input_name: str,
    image_shape: Sequence[int],
    max_batch: int,
) -> dict[str, str]:
    """TensorRT EP options: one dynamic-batch profile ``[1..max_batch, *image_shape]`` and the caches.

    Args:
        device_id: CUDA device index.
        fp16: let TensorRT build float16 kernels.
        cache_dir: this model version's cache folder; ``None`` = no cache (every start builds the engine).
        input_name: the graph's image input (the profile's shapes are keyed by it).
        image_shape: one image's shape without the batch dimension, e.g. ``(H, W, 3)``.
        max_batch: the largest batch of the profile.
    """
    dims = "x".join(str(d) for d in image_shape)
    opts = {
        "device_id": str(device_id),
        "trt_fp16_enable": "1" if fp16 else "0",
        "trt_profile_min_shapes": f"{input_name}:1x{dims}",
        "trt_profile_opt_shapes": f"{input_name}:{max_batch}x{dims}",
        "trt_profile_max_shapes": f"{input_name}:{max_batch}x{dims}",
    }
    if cache_dir is not None:
        opts.update(
            trt_engine_cache_enable="1",
            trt_engine_cache_path=str(cache_dir),
            trt_timing_cache_enable="1",
            trt_timing_cache_path=str(cache_dir),
        )
    return opts


def tensorrt_libraries() -> str | None:
    """The TensorRT library that could be loaded (``libnvinfer``), or ``None`` when TensorRT is missing.

    Also looks in the ``tensorrt_libs`` wheel (``pip install tensorrt``); loading it globally is what lets
    ONNX Runtime's TensorRT provider find it later.
    """
    found = load_shared_library(NVINFER_SONAMES, "tensorrt_libs", "libnvinfer.so*", mode=ctypes.RTLD_GLOBAL)
    return None if found is None else found[0]


def load_shared_library(
    sonames: Sequence[str], package: str, pattern: str, mode: int = ctypes.DEFAULT_MODE
) -> tuple[str, ctypes.CDLL] | None:
    """The first shared library that loads, with its name.

    Tried in order: ``sonames`` (the loader's search path), then files matching ``pattern`` inside the installed
    Python package ``package`` (the nvidia-* and tensorrt wheels ship the libraries there).

    Returns:
        ``(name, library)``, or ``None`` when none loads.
    """
    candidates = list(sonames)
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidates += sorted(str(p) for p in Path(folder).glob(pattern))
    for name in candidates:
        try:
            return name, ctypes.CDLL(name, mode=mode)
        except OSError:
            continue
    return None


def provider_list(
    want: str,
    available: Sequence[str],
    device_id: int = 0,
    trt: dict[str, str] | None = None,
    trt_library: str | None = None,
) -> list[ProviderEntry]:
    """The ``providers=`` argument of ``InferenceSession`` for RESCOM_PROVIDERS ``want``.

    Args:
        want: ``auto``, ``cpu``, ``cuda`` or ``tensorrt``.
        available: ``onnxruntime.get_available_providers()``.
        device_id: CUDA device index for the CUDA provider.
        trt: :func:`tensorrt_options` (needed for ``tensorrt``).
        trt_library: :func:`tensorrt_libraries` (``None``: TensorRT is not installed).

    Raises:
        ProviderError: the build or the machine lacks what ``want`` needs.
    """
    if want == "cpu":
        return [CPU]
    have = ", ".join(available)
    if want in ("cuda", "tensorrt") and CUDA not in available:
        raise ProviderError(
            f"providers={want} but this onnxruntime build has no CUDA provider (available: {have}); "
            "install onnxruntime-gpu (never next to onnxruntime) or use RESCOM_PROVIDERS=auto|cpu"
        )
    if want == "tensorrt":
        if TENSORRT not in available:
            raise ProviderError(
                f"providers=tensorrt but this onnxruntime build has no TensorRT provider ({have})"
            )
        if trt_library is None:
            raise ProviderError(
                "providers=tensorrt but the TensorRT libraries (libnvinfer.so.10) are not installed; the rescom "
                "GPU image does not ship TensorRT (docs/gpu.md): use RESCOM_PROVIDERS=cuda"
            )
        if trt is None:
            raise ProviderError("providers=tensorrt needs the TensorRT options (tensorrt_options)")
        return [(TENSORRT, trt), (CUDA, cuda_options(device_id)), CPU]
    if want in ("auto", "cuda") and CUDA in available:
        return [(CUDA, cuda_options(device_id)), CPU]
    if want == "auto":
        return [CPU]
    raise ProviderError(f"providers must be auto, cpu, cuda or tensorrt, got {want!r}")
