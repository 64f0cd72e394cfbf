"""HTTP front ends for the same app, same settings, same load: what the server in front of FastAPI costs.

``python benchmarks/serving/frontends.py [--granian-path .venv-granian] [--seconds 8] [--runs 2]``

Front ends (each serves ``service.main``'s app on the bundled digits model with the benchmark's settings):

- ``rescom``: ``python -m service`` (uvicorn + uvloop + httptools with :mod:`service.protocol`'s limits);
- ``uvicorn``: stock ``uvicorn --http httptools --loop uvloop`` (no limits): the cost of the limits;
- ``granian``: ``granian --interface asgi`` 2.8.7 (Rust/hyper), when installed under ``--granian-path``
  (``pip install --target .venv-granian granian==2.8.7``).

Load: ``wrk -t1`` with ``post.lua``, raw PNG bodies (28x28 RGB, 200 different images) to ``POST /predict``,
at each concurrency for ``--seconds``, ``--runs`` times. Prints req/s, p50, p99 and the server's CPU time per
request (user + system, from ``/proc``: less sensitive to other load than throughput) per run, and the load
average.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rescom_dev.servers import free_port, service_command, stop_process, wait_ready  # noqa: E402

LUA = Path(__file__).resolve().parent / "post.lua"
ENV = {
    "RESCOM_MODEL_REPOSITORY": str(ROOT / "models"),
    "RESCOM_MAX_BATCH_SIZE": "32",
    "RESCOM_MAX_QUEUE_DELAY_MS": "2",
    "RESCOM_INTRA_OP_THREADS": "2",
    "RESCOM_INSTANCES": "1",
    "RESCOM_PROVIDERS": "cpu",
    "RESCOM_POLL_INTERVAL_S": "0",
    "RESCOM_LOG_LEVEL": "warning",
}


def command(frontend: str, port: int, granian_path: Path) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, **ENV, "PYTHONPATH": str(ROOT)}
    if frontend == "rescom":
        return service_command(None, port), env
    if frontend == "uvicorn":
        args = ["--http", "httptools", "--loop", "uvloop", "--port", str(port), "--log-level", "warning"]
        return [sys.executable, "-m", "uvicorn", "service.main:app", *args], env
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{granian_path}"
    args = [
        "--interface",
        "asgi",
        "--loop",
        "uvloop",
        "--port",
        str(port),
        "--workers",
        "1",
        "--log-level",
        "warning",
    ]
    return [sys.executable, "-m", "granian", *args, "service.main:app"], env


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, its threads and its live child processes (granian runs its workers as
    children), from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        with contextlib.suppress(ValueError, OSError, IndexError):  # ValueError: not a process folder
            pid_entry = int(entry)
            children.setdefault(int(_stat(pid_entry)[1]), []).append(pid_entry)
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError, IndexError):
            fields = _stat(p)
            total += int(fields[11]) + int(fields[12])
        todo += children.get(p, [])
    return total / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def serving(frontend: str, granian_path: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    cmd, env = command(frontend, port, granian_path)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_ready(url, proc, timeout=60)
        except RuntimeError as err:
            raise RuntimeError(f"{frontend} did not start ({' '.join(cmd)}): {err}") from None
        yield url, proc.pid
    finally:
        stop_process(proc, graceful_s=30)


def manifest(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(200):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(buf, format="PNG")
        path = folder / f"{i}.png"
        path.write_bytes(buf.getvalue())
        lines.append(f"{path}\t/predict\tContent-Type: image/png")
    out = folder / "manifest.tsv"
    out.write_text("\n".join(lines) + "\n")
    return out


def wrk(url: str, connections: int, seconds: float, requests: Path) -> dict:
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{int(seconds)}s",
        "--latency",
        "-s",
        str(LUA),
        url,
        "--",
        str(requests),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    raw = json.loads(next(ln for ln in out.splitlines() if ln.startswith("WRK_JSON "))[9:])
    return {
        "requests_per_s": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "non_2xx": raw["status"],
        "requests": raw["requests"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frontends", default="rescom,uvicorn,granian")
    p.add_argument("--concurrencies", default="16,64")
    p.add_argument("--seconds", type=float, default=8)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--granian-path", type=Path, default=ROOT / ".venv-granian")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        requests = manifest(Path(d))
        print(f"load average before: {os.getloadavg()}")
        print("| front end | c | run | req/s | p50 ms | p99 ms | server CPU ms/req | non-2xx |")
        print("|---|---|---|---|---|---|---|---|")
        for frontend in args.frontends.split(","):
            with serving(frontend, args.granian_path) as (url, pid):
                wrk(url, 16, 2, requests)  # warm-up
                for c in map(int, args.concurrencies.split(",")):
                    for run in range(args.runs):
                        cpu0 = cpu_seconds(pid)
                        r = wrk(url, c, args.seconds, requests)
                        cpu_ms = 1000 * (cpu_seconds(pid) - cpu0) / max(1, r["requests"])
                        print(
                            f"| {frontend} | {c} | {run + 1} | {r['requests_per_s']:.0f} | {r['p50_ms']:.1f} | "
                            f"{r['p99_ms']:.1f} | {cpu_ms:.2f} | {r['non_2xx']} |",
                            flush=True,
                        )
        print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
