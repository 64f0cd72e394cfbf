"""The per-image work every peer server does, identical to ``service/`` (numpy, Pillow, ONNX Runtime only).

image bytes -> Pillow decode -> :func:`rescom.preprocess.resize_center_crop` (EXIF-transposed, as the service
does) -> uint8 batch ``[n, crop, crop, 3]`` -> ONNX Runtime (same session options as
``service/runtime.py``: ``ORT_ENABLE_ALL``, sequential, ``intra_op`` threads, one inter-op thread, spinning
off) -> :func:`rescom.calibration.calibrated_probs` with the model's fitted ``T``, ``b`` and default prior -> stable
top-k -> the same JSON document as ``POST /predict`` (stdlib ``json``, compact, like the service without
orjson).

Settings come from ``BENCH_*`` environment variables set by the harness (see :class:`AppSettings`). When
``BENCH_STATS_FILE`` names a 16-byte file, every model call adds ``(1 batch, n rows)`` to two int64 counters
in it (a shared ``mmap``, updated under an ``flock`` so the N worker processes of a peer never lose a count), so
the harness can report the mean batch size of servers that do not export one.
"""

from __future__ import annotations

import fcntl
import io
import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from rescom.calibration import calibrated_probs, prior_from_counts
from rescom.model_repository import METADATA_FILE
from rescom.preprocess import resize_center_crop

__all__ = ["AppSettings", "BatchCounter", "Pipeline"]

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class AppSettings:
    """What the harness passes to a peer app through ``BENCH_*`` environment variables."""

    model_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 32
    max_delay_ms: float = 2.0
    instances: int = 2
    ort_threads: int = 1
    timeout_s: float = 10.0
    top_k: int = 5
    stats_file: str | None = None

    @classmethod
    def from_env(cls) -> AppSettings:
        """Read ``BENCH_MODEL_DIR`` (required), ``BENCH_PORT``, ``BENCH_MAX_BATCH``, ``BENCH_INSTANCES``, ..."""
        env = os.environ
        return cls(
            model_dir=Path(env["BENCH_MODEL_DIR"]),
            host=env.get("BENCH_HOST", "127.0.0.1"),
            port=int(env.get("BENCH_PORT", "8000")),
            max_batch_size=int(env.get("BENCH_MAX_BATCH", "32")),
            max_delay_ms=float(env.get("BENCH_DELAY_MS", "2")),
            instances=int(env.get("BENCH_INSTANCES", "2")),
            ort_threads=int(env.get("BENCH_ORT_THREADS", "1")),
            timeout_s=float(env.get("BENCH_TIMEOUT_S", "10")),
            top_k=int(env.get("BENCH_TOP_K", "5")),
            stats_file=env.get("BENCH_STATS_FILE") or None,
        )


class BatchCounter:
    """Two int64 counters (batches, rows) in a shared 16-byte file; a no-op when ``path`` is ``None``.

    Several worker processes (Mosec, LitServe and BentoML workers) and threads (PyTriton's model instances) add
    to the same file: each counter opens the file itself and holds an exclusive ``flock`` on its own open file
    description around the read-modify-write, so no update is lost (a few microseconds per model call).
    """

    def __init__(self, path: str | None) -> None:
        self._map: mmap.mmap | None = None
        self._file: io.BufferedRandom | None = None
        if path:
            self._file = open(path, "r+b")  # noqa: SIM115 (held open for the lock, for the process's life)
            self._map = mmap.mmap(self._file.fileno(), 16)

    def add(self, rows: int) -> None:
        """Count one model call of ``rows`` rows."""
        if self._map is None or self._file is None:
            return
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
        try:
            batches, total = struct.unpack_from("<qq", self._map, 0)
            struct.pack_into("<qq", self._map, 0, batches + 1, total + rows)
        finally:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)

    @staticmethod
    def read(path: str | Path) -> tuple[int, int]:
        """``(batches, rows)`` counted so far."""
        data = Path(path).read_bytes()[:16]
        batches, rows = struct.unpack("<qq", data)
        return int(batches), int(rows)


class Pipeline:
    """One model version (``models/NAME/N``) and the exact request work of the service.

    Args:
        settings: the app settings (model folder, ORT threads, top-k, statistics file).
    """

    def __init__(self, settings: AppSettings) -> None:
        meta = json.loads((settings.model_dir / METADATA_FILE).read_text())
        self.name: str = meta["name"]
        self.version: int = int(meta["version"])
        self.class_names: list[str] = list(meta["class_names"])
        self.resize: int = int(meta["preprocess"]["resize"])
        self.crop: int = int(meta["preprocess"]["crop"])
        calibration = meta.get("calibration") or {}
        temperature = calibration.get("temperature")
        self.temperature = 1.0 if temperature is None else float(temperature)
        bias = calibration.get("class_bias")  # BCTS per-class b (None = 0), applied as the service does
        self.class_bias = None if bias is None else np.asarray(bias, dtype=np.float64)
        self.prior_kind: str = calibration.get("prior", "uniform")
        if self.prior_kind not in ("uniform", "train"):
            raise ValueError(
                f"the benchmark apps support the uniform and train priors, not {self.prior_kind}"
            )
        self.prior = prior_from_counts(meta["class_counts"]) if self.prior_kind == "train" else None
        self.top_k = min(settings.top_k, len(self.class_names))
        self.input_name: str = meta["inputs"][0]["name"]
        self.output_name: str = meta["outputs"][0]["name"]
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = settings.ort_threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        so.log_severity_level = 3
        onnx_file = settings.model_dir / meta.get("onnx", {}).get("file", "model.onnx")
        self.session = ort.InferenceSession(
            str(onnx_file), sess_options=so, providers=["CPUExecutionProvider"]
        )
        self.provider: str = self.session.get_providers()[0]
        self.counter = BatchCounter(settings.stats_file)
        self.warmup(settings.max_batch_size)

    def warmup(self, max_batch_size: int) -> None:
        """Run batch sizes 1, 2, 4, ... up to ``max_batch_size`` once, as the service does before ready."""
        b = 1
        while True:
            size = min(b, max_batch_size)
            self.session.run([self.output_name], {self.input_name: self.blank(size)})
            if size == max_batch_size:
                return
            b *= 2

    def blank(self, n: int) -> np.ndarray:
        """Zero images ``[n, crop, crop, 3]``."""
        return np.zeros((n, self.crop, self.crop, 3), dtype=np.uint8)

    def decode(self, data: bytes) -> np.ndarray:
        """Encoded image -> uint8 ``[crop, crop, 3]`` (the service's decode path)."""
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return resize_center_crop(img, self.resize, self.crop, exif_transpose=True)

    def decode_many(self, blobs: list[bytes]) -> np.ndarray:
        """Encoded images -> uint8 ``[n, crop, crop, 3]``."""
        out = np.empty((len(blobs), self.crop, self.crop, 3), dtype=np.uint8)
        for i, data in enumerate(blobs):
            out[i] = self.decode(data)
        return out

    def infer(self, x: np.ndarray) -> np.ndarray:
        """One model call: uint8 ``[n, crop, crop, 3]`` -> float32 logits ``[n, C]``."""
        logits = self.session.run([self.output_name], {self.input_name: x})[0]
        self.counter.add(int(x.shape[0]))
        return logits

    def respond(self, logits: np.ndarray) -> list[dict[str, Any]]:
        """Calibrated top-k per row: one ``POST /predict`` response document per image."""
        probs = calibrated_probs(
            logits, temperature=self.temperature, prior=self.prior, class_bias=self.class_bias
        )  # [n, C] float64
        order = np.argsort(-probs, axis=1, kind="stable")[:, : self.top_k]  # [n, k]
        scores = np.take_along_axis(probs, order, axis=1).tolist()
        out = []
        for idx, sc in zip(order.tolist(), scores, strict=True):
            top = [
                {"label": self.class_names[c], "class_id": c, "score": s}
                for c, s in zip(idx, sc, strict=True)
            ]
            out.append(
                {
                    "model": self.name,
                    "version": self.version,
                    "provider": self.provider,
                    "calibration": {"prior": self.prior_kind, "temperature": self.temperature},
                    "predictions": [
                        {"label": self.class_names[idx[0]], "class_id": idx[0], "score": sc[0], "top_k": top}
                    ],
                }
            )
        return out

    @staticmethod
    def encode(document: dict[str, Any]) -> bytes:
        """Compact JSON bytes (the service's encoder when orjson is absent)."""
        return _ENCODER.encode(document).encode()

    def handle(self, blobs: list[bytes]) -> list[bytes]:
        """The whole job for a batch of single-image requests: bytes in, JSON bodies out, in order."""
        logits = self.infer(self.decode_many(blobs))
        return [self.encode(doc) for doc in self.respond(logits)]
