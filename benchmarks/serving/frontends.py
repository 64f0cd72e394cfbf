"""HTTP front ends for the same app, same settings, same load: what the server in front of the app costs.

``python benchmarks/serving/frontends.py [--frontends rescom,rescom-asgi,uvicorn,granian] [--seconds 10]
[--runs 3]``

Front ends (each serves ``service.main``'s app on the bundled digits model with the service's defaults on 2
cores: 2 model instances x 1 ORT thread, batches of up to 32, 2 ms window):

- ``rescom``: ``python -m service`` (uvicorn + uvloop + httptools with :mod:`service.protocol`'s limits; raw-body
  ``POST /predict`` answered from the protocol, :mod:`service.hotpath`);
- ``rescom-asgi``: the same with ``RESCOM_PROTOCOL_FAST_PATH=false``: ``POST /predict`` through uvicorn's ASGI
  cycle and the ASGI fast path (:mod:`service.fastpath`);
- ``uvicorn``: stock ``uvicorn --http httptools --loop uvloop service.main:app`` (no limits, ASGI fast path);
- ``granian``: ``granian --interface asgi`` 2.8.7 (Rust/hyper), when installed under ``--granian-path``
  (``pip install --target .venv-granian granian==2.8.7``);
- ``--checkout LABEL=PATH`` (repeatable): ``python -m service`` from another checkout of this repository (e.g.
  ``git worktree add --detach ../before <commit>``), to measure what a change bought.

Load: ``wrk -t1`` with ``post.lua``, the benchmark's 500 digits-LT test PNGs as raw bodies to ``POST /predict``,
at each concurrency for ``--seconds``. Runs are interleaved: every front end is started afresh in each run, so
the drift of a shared machine reaches all alike. Per point: req/s, p50, p99, the server's CPU time per request
(user + system, from ``/proc``) and the share of the machine left idle. Writes
``benchmarks/results/NAME.{json,md}`` (``--name``, default ``frontends``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.serving.config import RAW_DIR  # noqa: E402
from benchmarks.serving.servers import cpu_split  # noqa: E402
from benchmarks.serving.workload import load_images, write_wrk_requests  # noqa: E402
from rescom_dev.machine import busy_cpu_seconds, describe_machine  # noqa: E402
from rescom_dev.results import write_result  # noqa: E402
from rescom_dev.servers import free_port, service_command, stop_process, wait_ready  # noqa: E402

LUA = Path(__file__).resolve().parent / "post.lua"
ENV = {
    "RESCOM_MODEL_REPOSITORY": str(ROOT / "models"),
    "RESCOM_MAX_BATCH_SIZE": "32",
    "RESCOM_MAX_QUEUE_DELAY_MS": "2",
    "RESCOM_INTRA_OP_THREADS": "1",
    "RESCOM_INSTANCES": "2",
    "RESCOM_PROVIDERS": "cpu",
    "RESCOM_POLL_INTERVAL_S": "0",
    "RESCOM_LOG_LEVEL": "warning",
}


def command(
    frontend: str, port: int, granian_path: Path, checkouts: dict[str, Path]
) -> tuple[list[str], dict[str, str], Path]:
    """The command line, environment and working folder of one front end."""
    env = {**os.environ, **ENV, "PYTHONPATH": str(ROOT)}
    if frontend in checkouts:
        folder = checkouts[frontend].resolve()
        return service_command(None, port), {**env, "PYTHONPATH": str(folder)}, folder
    cmd, env = _command(frontend, port, granian_path, env)
    return cmd, env, ROOT


def _command(
    frontend: str, port: int, granian_path: Path, env: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    if frontend == "rescom":
        return service_command(None, port), env
    if frontend == "rescom-asgi":
        return service_command(None, port), {**env, "RESCOM_PROTOCOL_FAST_PATH": "false"}
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


@contextlib.contextmanager
def serving(frontend: str, granian_path: Path, checkouts: dict[str, Path]) -> Iterator[tuple[str, int]]:
    port = free_port()
    cmd, env, folder = command(frontend, port, granian_path, checkouts)
    proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_ready(url, proc, timeout=60)
        except RuntimeError as err:
            raise RuntimeError(f"{frontend} did not start ({' '.join(cmd)}): {err}") from None
        yield url, proc.pid
    finally:
        stop_process(proc, graceful_s=30)


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


def measure(url: str, pid: int, connections: int, seconds: float, requests: Path) -> dict:
    """One wrk point with the server's CPU per request (all, and its main thread's) and the machine's idle share."""
    split0, busy0, t0 = cpu_split(pid), busy_cpu_seconds(), time.monotonic()
    r = wrk(url, connections, seconds, requests)
    elapsed = time.monotonic() - t0
    split1 = cpu_split(pid)
    cpu = sum(split1.values()) - sum(split0.values())
    r["server_cpu_ms_per_req"] = 1000 * cpu / max(1, r["requests"])
    main = split1["main thread"] - split0["main thread"]
    r["main_thread_cpu_ms_per_req"] = 1000 * main / max(1, r["requests"])
    r["machine_idle_pct"] = 100 * max(
        0.0, 1 - (busy_cpu_seconds() - busy0) / (elapsed * (os.cpu_count() or 1))
    )
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frontends", default="rescom,rescom-asgi,uvicorn,granian")
    p.add_argument("--concurrencies", default="1,64,256")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--granian-path", type=Path, default=ROOT / ".venv-granian")
    p.add_argument("--name", default="frontends", help="result file stem under benchmarks/results/")
    p.add_argument(
        "--checkout", action="append", default=[], metavar="LABEL=PATH", help="another checkout's service"
    )
    args = p.parse_args()
    checkouts = {label: Path(path) for label, _, path in (c.partition("=") for c in args.checkout)}
    frontends = [f for f in args.frontends.split(",") if f != "granian" or args.granian_path.is_dir()]
    frontends += list(checkouts)
    requests = write_wrk_requests("raw", load_images(), RAW_DIR / "requests" / "raw")
    machine = describe_machine()
    rows = []
    lines = [
        "| front end | c | run | req/s | p50 ms | p99 ms | server CPU ms/req | main thread CPU ms/req "
        "| machine idle % | non-2xx |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for run in range(args.runs):
        for frontend in frontends:
            with serving(frontend, args.granian_path, checkouts) as (url, pid):
                wrk(url, 16, 2, requests)  # warm-up
                for c in map(int, args.concurrencies.split(",")):
                    r = measure(url, pid, c, args.seconds, requests)
                    rows.append({"frontend": frontend, "concurrency": c, "run": run + 1, **r})
                    lines.append(
                        f"| {frontend} | {c} | {run + 1} | {r['requests_per_s']:.0f} | {r['p50_ms']:.2f} | "
                        f"{r['p99_ms']:.1f} | {r['server_cpu_ms_per_req']:.3f} | "
                        f"{r['main_thread_cpu_ms_per_req']:.3f} | {r['machine_idle_pct']:.1f} | "
                        f"{r['non_2xx']} |"
                    )
                    print(lines[-1], flush=True)
    checkout_notes = {label: str(path) for label, path in checkouts.items()}
    figures = {"points": rows, "settings": ENV, "checkouts": checkout_notes}
    write_result(args.name, figures, "\n".join(lines), machine)


if __name__ == "__main__":
    main()
