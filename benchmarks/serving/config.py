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
        instances: model instances every server runs (worker processes, Triton instances, our batchers): N.
        ort_threads: ONNX Runtime intra-op threads of each instance: T. N x T = 2 x 1 is the service's default on
            2 cores (``service/runtime.py:_instances_and_threads``); the same N x T for every server.
        timeout_s: request deadline (the service's ``request_timeout_s``).
        wrk_threads: load generator threads (1 leaves the most CPU to the server on a 2-core box).
        repeats: runs of each of the ``repeat_top`` highest concurrencies (median reported, with the spread).
        repeat_top: how many of the highest concurrencies are repeated.
        mosec_wait_ms: Mosec's ``max_wait_time`` (integer ms; its unit). 5 ms: the independent comparison of
            issue 12 found Mosec best there; 2 ms (our window) starved its batches on a loaded box.
        bentoml_max_latency_ms: BentoML's ``max_latency_ms``, which its docs tell users to set to their latency
            objective (the adaptive dispatcher sizes its window from it); 10 s made it wait far too long.
        quick: a short development run.
    """

    concurrencies: tuple[int, ...] = (1, 16, 64, 256)
    duration_s: float = 12.0
    warmup_s: float = 2.0
    max_batch_size: int = 32
    max_delay_ms: float = 2.0
    instances: int = 2
    ort_threads: int = 1
    timeout_s: float = 10.0
    wrk_threads: int = 1
    repeats: int = 3
    repeat_top: int = 2
    mosec_wait_ms: float = 5.0
    bentoml_max_latency_ms: float = 200.0
    quick: bool = False

    def runs_at(self, concurrency: int) -> int:
        """How many times the point at ``concurrency`` is measured."""
        top = sorted(self.concurrencies)[-self.repeat_top :] if self.repeat_top > 0 else []
        return self.repeats if concurrency in top else 1

    def app_env(self) -> dict[str, str]:
        """``BENCH_*`` variables read by the peer apps (:class:`apps.pipeline.AppSettings`)."""
        return {
            "BENCH_MAX_BATCH": str(self.max_batch_size),
            "BENCH_DELAY_MS": str(self.max_delay_ms),
            "BENCH_INSTANCES": str(self.instances),
            "BENCH_ORT_THREADS": str(self.ort_threads),
            "BENCH_TIMEOUT_S": str(self.timeout_s),
            "BENCH_MOSEC_WAIT_MS": str(self.mosec_wait_ms),
            "BENCH_BENTOML_MAX_LATENCY_MS": str(self.bentoml_max_latency_ms),
        }

    def service_env(self) -> dict[str, str]:
        """``RESCOM_*`` variables for our service: the same settings as the peers, spelled out.

        With the defaults (2 instances x 1 ORT thread, batch 32, 2 ms) they equal the service's own defaults on a
        2-core machine; other ``--instances`` / ``--ort-threads`` override them for every server alike.
        """
        return {
            "RESCOM_MAX_BATCH_SIZE": str(self.max_batch_size),
            "RESCOM_MAX_QUEUE_DELAY_MS": str(self.max_delay_ms),
            "RESCOM_INTRA_OP_THREADS": str(self.ort_threads),
            "RESCOM_INTER_OP_THREADS": "1",
            "RESCOM_INSTANCES": str(self.instances),
            "RESCOM_REQUEST_TIMEOUT_S": str(self.timeout_s),
            "RESCOM_PROVIDERS": "cpu",
            "RESCOM_POLL_INTERVAL_S": "0",
            "RESCOM_LOG_LEVEL": "warning",
        }
