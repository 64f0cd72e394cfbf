"""Model calls through ONNX Runtime IO binding, with page-locked (pinned) host buffers on CUDA.

With a plain ``session.run`` on the CUDA provider, every call allocates host output arrays and copies the
input from pageable memory (the driver stages it through its own pinned buffer first). :class:`BoundRunner`
instead keeps, per padded batch size, an input and an output buffer in page-locked host memory: the batch is
written into the input buffer (padding rows zeroed), which is then bound (ONNX Runtime copies it to the GPU by
DMA at that moment), the session runs, and the logits land straight in the bound output buffer.

Page-locked memory comes from ``cudaHostAlloc`` of the CUDA runtime that onnxruntime-gpu loads; when it cannot
be had (no CUDA runtime, or on the CPU provider) ordinary numpy memory is used, which is correct, only slower.
Buffers are checked out per call, so concurrent calls (``RESCOM_INSTANCES`` > 1) never share one.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import weakref
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from service.providers import load_shared_library

__all__ = ["BoundRunner", "PinnedAllocator"]

log = logging.getLogger("rescom.service.iobinding")

CUDART_SONAMES = ("libcudart.so.13", "libcudart.so.12", "libcudart.so")
CUDA_HOST_ALLOC_PORTABLE = (
    1  # pinned for every CUDA context, not only the allocating one (RESCOM_DEVICE_ID > 0)
)


def _load_cudart() -> ctypes.CDLL | None:
    """The CUDA runtime library (already loaded by ``onnxruntime.preload_dlls()`` or in an nvidia wheel)."""
    found = load_shared_library(CUDART_SONAMES, "nvidia", "*/lib/libcudart.so*")
    if found is None:
        return None
    lib = found[1]
    lib.cudaHostAlloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_uint]
    lib.cudaHostAlloc.restype = ctypes.c_int
    lib.cudaFreeHost.argtypes = [ctypes.c_void_p]
    lib.cudaFreeHost.restype = ctypes.c_int
    return lib


class PinnedAllocator:
    """numpy arrays in page-locked host memory (``cudaHostAlloc``), or ordinary ones when that fails.

    Attributes:
        pinned: whether the arrays really are page-locked.
        reason: why not, when they are not.

    Args:
        want_pinned: try page-locked memory (a GPU provider); ``False`` gives ordinary arrays.
    """

    def __init__(self, want_pinned: bool) -> None:
        self._cudart = _load_cudart() if want_pinned else None
        self.pinned = self._cudart is not None
        self.reason = (
            "" if self.pinned else ("CPU provider" if not want_pinned else "no CUDA runtime library")
        )

    def empty(self, shape: Sequence[int], dtype: np.dtype | type) -> np.ndarray:
        """An uninitialised array; page-locked when possible (freed when the array is garbage collected)."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if self._cudart is None or nbytes == 0:
            return np.empty(shape, dtype=dtype)
        ptr = ctypes.c_void_p()
        status = self._cudart.cudaHostAlloc(ctypes.byref(ptr), nbytes, CUDA_HOST_ALLOC_PORTABLE)
        if status != 0 or not ptr.value:
            self.pinned, self.reason = False, f"cudaHostAlloc failed with CUDA error {status}"
            log.warning("pinned host memory unavailable (%s); using pageable memory", self.reason)
            self._cudart = None
            return np.empty(shape, dtype=dtype)
        raw = (ctypes.c_uint8 * nbytes).from_address(ptr.value)
        # numpy's stubs list bytes/bytearray/memoryview/... as buffers; a ctypes array is one too (buffer protocol).
        array = np.frombuffer(raw, dtype=dtype).reshape(shape)  # type: ignore[call-overload]
        weakref.finalize(raw, self._cudart.cudaFreeHost, ptr.value)
        return array


class _Slot:
    """Bound input/output buffers of one batch size."""

    def __init__(
        self,
        session: ort.InferenceSession,
        names: tuple[str, str],
        shapes: tuple[tuple[int, ...], tuple[int, ...]],
        alloc: PinnedAllocator,
    ) -> None:
        self.inputs = alloc.empty(shapes[0], np.uint8)  # [bucket, H, W, 3]
        self.inputs.fill(0)
        self.outputs = alloc.empty(shapes[1], np.float32)  # [bucket, C]
        # CPU OrtValues share the numpy buffers (no copy); kept here so both outlive the binding.
        self.values = (
            ort.OrtValue.ortvalue_from_numpy(self.inputs),
            ort.OrtValue.ortvalue_from_numpy(self.outputs),
        )
        self.binding = session.io_binding()
        self.binding.bind_ortvalue_output(names[1], self.values[1])  # filled at the end of every run
        self.rows_used = 0  # rows of `inputs` holding data from the previous call


class BoundRunner:
    """Runs one session through IO binding with reusable (pinned) host buffers per batch size.

    Args:
        session: the ONNX Runtime session (any provider).
        input_name, output_name: the graph's image input (uint8 ``[n, H, W, 3]``) and logits output.
        image_shape: ``(H, W, 3)``.
        num_classes: C.
        pinned: try page-locked host memory (true for CUDA/TensorRT sessions).
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        input_name: str,
        output_name: str,
        image_shape: tuple[int, ...],
        num_classes: int,
        pinned: bool,
    ) -> None:
        self._session = session
        self._names = (input_name, output_name)
        self._image_shape = tuple(image_shape)
        self._num_classes = num_classes
        self._alloc = PinnedAllocator(pinned)
        self._free: dict[int, list[_Slot]] = {}
        self._lock = threading.Lock()

    @property
    def pinned(self) -> bool:
        """Whether the host buffers are page-locked."""
        return self._alloc.pinned

    def _checkout(self, bucket: int) -> _Slot:
        with self._lock:
            free = self._free.setdefault(bucket, [])
            if free:
                return free.pop()
        shapes = ((bucket, *self._image_shape), (bucket, self._num_classes))
        return _Slot(self._session, self._names, shapes, self._alloc)

    def _checkin(self, bucket: int, slot: _Slot) -> None:
        with self._lock:
            self._free[bucket].append(slot)

    def run(self, images: np.ndarray, bucket: int) -> np.ndarray:
        """Logits ``[n, C]`` for uint8 ``images`` ``[n, H, W, 3]``, run as a batch of ``bucket`` >= n rows."""
        n = images.shape[0]
        if not 1 <= n <= bucket:
            raise ValueError(f"batch of {n} rows does not fit a bucket of {bucket}")
        slot = self._checkout(bucket)
        try:
            slot.inputs[:n] = images
            if slot.rows_used > n:
                slot.inputs[n : slot.rows_used] = 0  # padding rows: zeros, as the unbound path pads
            slot.rows_used = n
            # ONNX Runtime copies a bound input to the device when it is BOUND, not at run time: binding once and
            # rewriting the buffer would run every later batch on stale data. So bind on every call (the copy
            # then starts here, from page-locked memory).
            slot.binding.bind_ortvalue_input(self._names[0], slot.values[0])
            slot.binding.synchronize_inputs()
            self._session.run_with_iobinding(slot.binding)
            slot.binding.synchronize_outputs()  # the logits are in host memory before they are read
            return slot.outputs[:n].copy()  # the buffer is reused by the next call
        finally:
            self._checkin(bucket, slot)
