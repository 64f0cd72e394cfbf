"""How each server is started, checked for readiness, asked for its batch statistics, and stopped.

Every server runs in its own process group (``start_new_session``), from its own virtual environment, on
127.0.0.1 and a free port, with the repository root on ``PYTHONPATH`` (for ``rescom.preprocess`` /
``rescom.calibration`` and the peer apps). Stopping sends SIGTERM to that group only, then SIGKILL after a
grace period.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.serving.apps.pipeline import BatchCounter
from benchmarks.serving.config import ENVS_DIR, ROOT, BenchConfig
from rescom_dev.servers import free_port, service_command

__all__ = ["SERVERS", "ServerSpec", "RunningServer", "describe", "start_server", "free_port"]

OURS = "rescom"


@dataclass(frozen=True)
class ServerSpec:
    """One server of the benchmark.

    Attributes:
        key: short name; also the virtual environment ``.envs/<key>`` and ``requirements-<key>.txt``.
        title: name in the results.
        fmt: wire format of its requests (``raw`` or ``v2``, see :mod:`workload`).
        ready_path: GET path that answers 200 once the model is loaded.
        startup_s: longest wait for readiness.
        notes: how it is configured, for the results; ``{n}``, ``{t}``, ``{window}``... are filled in by
            :func:`describe`.
    """

    key: str
    title: str
    fmt: str
    ready_path: str
    startup_s: float = 120.0
    notes: str = ""


SERVERS: tuple[ServerSpec, ...] = (
    ServerSpec(
        OURS,
        "ResCom service (ours)",
        "raw",
        "/health/ready",
        notes="python -m service (its defaults on 2 cores): 1 uvicorn process, raw-body POST /predict answered "
        "from the connection protocol, small images decoded on the event loop, 1 ORT session run by {n} batcher "
        "worker threads that take their own batches ({n} model calls at once) x {t} ORT thread(s), window "
        "{window:g} ms",
    ),
    ServerSpec(
        "mosec",
        "Mosec 0.9.8",
        "raw",
        "/",
        notes="{n} worker processes (append_worker num={n}; Mosec: num is 'the number of processes for parallel "
        "computing') x {t} ORT thread(s), 1 stage (decode+ORT+calibration), max_wait_time {mosec_wait:g} ms "
        "(Mosec's unit is ms; 5 ms was its best in issue 12's independent run)",
    ),
    ServerSpec(
        "litserve",
        "LitServe 0.2.19",
        "raw",
        "/health",
        notes="1 API server process + {n} inference worker processes (workers_per_device={n}; LitServe: 'For CPU, "
        "set to the number of cores available on the machine') x {t} ORT thread(s), fast_queue (ZeroMQ), "
        "batch_timeout {window:g} ms",
    ),
    ServerSpec(
        "bentoml",
        "BentoML 1.4.40",
        "raw",
        "/readyz",
        startup_s=180.0,
        notes="{n} worker processes (workers={n}; BentoML: workers 'leverage the parallelism of the underlying "
        "hardware, whether it's multi-core CPUs or multi-device GPUs') x {t} ORT thread(s), threads=1, adaptive "
        "batching (no fixed window; max_latency_ms = {bentoml_latency:g} ms, the latency objective, as "
        "BentoML's docs recommend)",
    ),
    ServerSpec(
        "pytriton",
        "Triton via PyTriton 0.7.0",
        "v2",
        "/v2/models/classify/ready",
        startup_s=180.0,
        notes="Triton 2.51 C++ front end + dynamic batcher (max_queue_delay {window_us:.0f} us), {n} model "
        "instances (a list of {n} callables, PyTriton's multi-instance form; threads of one Python process) x "
        "{t} ORT thread(s), KServe v2 binary request",
    ),
)


def describe(spec: ServerSpec, cfg: BenchConfig) -> str:
    """``spec.notes`` with this run's settings filled in (instances x threads, windows)."""
    return spec.notes.format(
        n=cfg.instances,
        t=cfg.ort_threads,
        window=cfg.max_delay_ms,
        window_us=cfg.max_delay_ms * 1000,
        mosec_wait=cfg.mosec_wait_ms,
        bentoml_latency=cfg.bentoml_max_latency_ms,
    )


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """Status and body of a GET (``(0, b"")`` when the connection fails)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (OSError, urllib.error.URLError):
        return 0, b""


@dataclass
class RunningServer:
    """A started server: its process group, URL and how to read its batch statistics."""

    spec: ServerSpec
    proc: subprocess.Popen[bytes]
    base_url: str
    log: Path
    stats_file: Path | None = None  # peers: the pipeline's batch counter
    metrics_url: str | None = None  # ours: Prometheus text with rescom_batch_size
    extra: dict[str, str] = field(default_factory=dict)

    def batch_stats(self) -> tuple[int, int] | None:
        """``(model calls, rows)`` so far, or ``None`` when unavailable."""
        if self.stats_file is not None:
            return BatchCounter.read(self.stats_file)
        if self.metrics_url is not None:
            status, body = http_get(self.metrics_url)
            if status != 200:
                return None
            text = body.decode()
            count = re.search(r"^rescom_batch_size_count\{[^}]*\} ([0-9.e+]+)$", text, re.M)
            total = re.search(r"^rescom_batch_size_sum\{[^}]*\} ([0-9.e+]+)$", text, re.M)
            if count and total:
                return int(float(count.group(1))), int(float(total.group(1)))
        return None

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server's live processes (the started one and its descendants).

        Found by parent links rather than the process group: BentoML's supervisor puts its workers in
        process groups of their own.
        """
        return sum(self.cpu_split().values())

    def cpu_split(self) -> dict[str, float]:
        """:meth:`cpu_seconds` by where it was spent (:func:`cpu_split`)."""
        return cpu_split(self.proc.pid)

    def wait_ready(self) -> None:
        """Poll the readiness path until 200.

        Raises:
            RuntimeError: the process exited or the deadline passed (with the log's tail).
        """
        deadline = time.monotonic() + self.spec.startup_s
        url = self.base_url + self.spec.ready_path
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with code {self.proc.returncode} before ready: {self.log_tail()}")
            status, _ = http_get(url, timeout=2.0)
            if status == 200:
                return
            time.sleep(0.5)
        raise RuntimeError(f"not ready after {self.spec.startup_s:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 6) -> str:
        """The last lines of the server's log, on one line."""
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])[-600:]

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace_s``."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


def _command(spec: ServerSpec, python: Path, repo: Path, port: int) -> list[str]:
    if spec.key == OURS:
        name = next(p.name for p in repo.iterdir())
        return service_command(repo, port, "--model", name, python=python)
    if spec.key == "bentoml":
        bentoml = str(python.parent / "bentoml")
        app = "benchmarks.serving.apps.bentoml_app:Classifier"
        return [bentoml, "serve", app, "--host", "127.0.0.1", "--port", str(port)]
    return [str(python), "-m", f"benchmarks.serving.apps.{spec.key}_app"]


@contextlib.contextmanager
def start_server(
    spec: ServerSpec,
    python: Path,
    model_dir: Path,
    cfg: BenchConfig,
    log: Path,
    service_root: Path | None = None,
) -> Iterator[RunningServer]:
    """Start ``spec`` serving ``model_dir`` (``models/NAME/N``), wait until ready, stop it afterwards.

    ``service_root``: run our service from this checkout (its ``service/`` and ``rescom/``) instead of this one,
    e.g. to measure a patch of ``service/``.
    """
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESCOM_", "BENCH_"))}
    env.update(
        PYTHONPATH=str(ROOT), BENCH_MODEL_DIR=str(model_dir), BENCH_PORT=str(port), BENCH_HOST="127.0.0.1"
    )
    env.update(cfg.app_env())
    cwd = ROOT
    if spec.key == OURS and service_root is not None:
        cwd = service_root.resolve()
        env["PYTHONPATH"] = str(cwd)
    with tempfile.TemporaryDirectory(prefix=f"bench-{spec.key}-") as tmp:
        tmp_dir = Path(tmp)
        repo = tmp_dir / "repo"
        stats_file: Path | None = None
        metrics_url: str | None = None
        extra: dict[str, str] = {}
        if spec.key == OURS:
            # A one-model repository whose only version is model_dir itself (the same files as the peers).
            (repo / model_dir.parent.name).mkdir(parents=True)
            (repo / model_dir.parent.name / model_dir.name).symlink_to(model_dir.resolve())
            env.update(cfg.service_env())
            metrics_url = f"http://127.0.0.1:{port}/metrics"
        else:
            stats_file = tmp_dir / "batches.bin"
            stats_file.write_bytes(b"\0" * 16)
            env["BENCH_STATS_FILE"] = str(stats_file)
        if spec.key == "bentoml":
            env.update(BENTOML_HOME=str(ENVS_DIR / "bentoml-home"), BENTOML_DO_NOT_TRACK="true")
        if spec.key == "pytriton":
            extra = {"grpc_port": str(free_port()), "metrics_port": str(free_port())}
            env.update(BENCH_GRPC_PORT=extra["grpc_port"], BENCH_METRICS_PORT=extra["metrics_port"])
            env["BENCH_WORKSPACE"] = str(
                tmp_dir / "pytriton"
            )  # removed with tmp_dir (else ~/.cache/pytriton)
            # PyTriton's tritonserver needs libpython3.x.so on the library path (docs/serving.md 2.5).
            libdir = sysconfig.get_config_var("LIBDIR") or ""
            env["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                _command(spec, python, repo, port),
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        server = RunningServer(spec, proc, f"http://127.0.0.1:{port}", log, stats_file, metrics_url, extra)
        try:
            server.wait_ready()
            yield server
        finally:
            server.stop()


def _main_thread_ticks(pid: int) -> int:
    """utime + stime clock ticks of a process's main thread (its task with the process's id)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def cpu_split(root: int) -> dict[str, float]:
    """User + system CPU seconds of process ``root`` and its live descendants, by where it was spent.

    The process's main thread and its other threads, and its descendant processes by command name (e.g. Mosec's
    Rust front end ``mosec`` and its ``python`` workers). Descendants are found by parent links rather than the
    process group: BentoML's supervisor puts its workers in process groups of their own.
    """
    parent: dict[int, int] = {}
    cpu: dict[int, int] = {}
    names: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        pid = int(stat.parent.name)
        parent[pid] = int(fields[1])  # ppid
        cpu[pid] = int(fields[11]) + int(fields[12])  # utime, stime
        names[pid] = text[text.index("(") + 1 : text.rindex(")")]
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    split: dict[str, float] = {"main thread": _main_thread_ticks(root)}
    split["other threads"] = cpu.get(root, 0) - split["main thread"]
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        label = f"process {names.get(pid, '?')}"
        split[label] = split.get(label, 0) + cpu.get(pid, 0)
        todo.extend(children.get(pid, []))
    tick = os.sysconf("SC_CLK_TCK")
    return {label: ticks / tick for label, ticks in split.items()}
