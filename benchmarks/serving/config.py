"""Paths and the settings shared by every server in the benchmark (one place, so the runs stay comparable)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["ROOT", "SERVING_DIR", "ENVS_DIR", "CACHE_DIR", "RESULTS_DIR", "RAW_DIR", "BenchConfig"]

SERVING_DIR = Path(__file__).resolve().parent
ROOT = SERVING_DIR.parents[1]
ENVS_DIR = SERVING_DIR / ".envs"  # one virtual environment per server (gitignored)
CACHE_DIR = SERVING_DIR / ".cache"  # digits-LT test PNGs (gitignored)
RESULTS_DIR = ROOT / "benchmarks" / "results"
RAW_DIR = RESULTS_DIR / "raw" / "serving"  # logs, wrk request files (gitignored)


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run.

    Attributes:
        concurrencies: closed-loop connections of the load generator, one point each.
        duration_s: seconds of load per (server, concurrency) point.
        warmup_s: seconds of load at concurrency 16 before the first point (after the accuracy pass).
        max_batch_size: rows per model call, every server (the service's default).
        max_delay_ms: batching window, every server that has one (the service's default).
        ort_threads: ONNX Runtime intra-op threads of the one model instance (the service's default on 2 cores).
        timeout_s: request deadline (the service's ``request_timeout_s``).
        wrk_threads: load generator threads (1 leaves the most CPU to the server on a 2-core box).
        quick: a short development run.
    """

    concurrencies: tuple[int, ...] = (1, 16, 64, 256)
    duration_s: float = 12.0
    warmup_s: float = 2.0
    max_batch_size: int = 32
    max_delay_ms: float = 2.0
    ort_threads: int = 2
    timeout_s: float = 10.0
    wrk_threads: int = 1
    quick: bool = False

    def app_env(self) -> dict[str, str]:
        """``BENCH_*`` variables read by the peer apps (:class:`apps.pipeline.AppSettings`)."""
        return {
            "BENCH_MAX_BATCH": str(self.max_batch_size),
            "BENCH_DELAY_MS": str(self.max_delay_ms),
            "BENCH_ORT_THREADS": str(self.ort_threads),
            "BENCH_TIMEOUT_S": str(self.timeout_s),
        }

    def service_env(self) -> dict[str, str]:
        """``RESCOM_*`` variables for our service: the same settings, spelled out (they are its defaults)."""
        return {
            "RESCOM_MAX_BATCH_SIZE": str(self.max_batch_size),
            "RESCOM_MAX_QUEUE_DELAY_MS": str(self.max_delay_ms),
            "RESCOM_INTRA_OP_THREADS": str(self.ort_threads),
            "RESCOM_INTER_OP_THREADS": "1",
            "RESCOM_INSTANCES": "1",
            "RESCOM_REQUEST_TIMEOUT_S": str(self.timeout_s),
            "RESCOM_PROVIDERS": "cpu",
            "RESCOM_POLL_INTERVAL_S": "0",
            "RESCOM_LOG_LEVEL": "warning",
        }
