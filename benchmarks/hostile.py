"""Hostile clients against a real ``python -m service`` (issue 13): what each attack costs the server.

``python benchmarks/hostile.py [--model-repository models] [--reload-s 60] [--sigterm-runs 5] [--quick]``

For every attack it prints the status codes the attackers got, the server's peak RSS growth over its RSS before
the attack, ``/health/live`` p99 latency while the attack ran (a prober on its own connection, every 10 ms),
and the server's CPU seconds during the attack. Then: hot reload every 2 s under 16 clients (4 uploading
slowly) with the failed-request count, and SIGTERM during 32-client load with a fresh connection per request
(default settings) with the count of requests that reached the socket and got no response.

Targets (issue 13): floods <= +16 MiB and a 4xx; 16-bit 25 MP PNG <= +64 MiB peak per request;
``/health/live`` p99 <= 20 ms while 8 clients post 25 MP images; RSS after the run <= 1.25x RSS after warm-up;
overflowing priors -> 400; reload: 0 failed; SIGTERM: 0 dropped.

The server is the bundled digits model with default settings (except ``RESCOM_POLL_INTERVAL_S``).
Everything binds 127.0.0.1 on free ports. Timings on a shared machine are indicative: the load average is
printed with the results.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rescom import model_repository as mr  # noqa: E402
from rescom_dev.machine import describe_machine  # noqa: E402
from rescom_dev.results import write_result  # noqa: E402
from rescom_dev.servers import free_port, service_process  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------- the server


@contextlib.contextmanager
def service(repo: Path, **env: str) -> Iterator[tuple[subprocess.Popen, int]]:
    """``python -m service`` on a free port, ready when yielded, killed on the way out if still running."""
    port = free_port()
    full_env = {"PYTHONPATH": str(ROOT), "RESCOM_LOG_LEVEL": "warning", **env}
    with service_process(repo, port, full_env, ready_timeout=90, output=subprocess.DEVNULL) as proc:
        yield proc, port


def status(port: int, path: str) -> int | None:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        c.request("GET", path)
        code = c.getresponse().status
        c.close()
        return code
    except OSError:
        return None


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


class Monitor:
    """Samples the server's RSS every 5 ms and probes ``/health/live`` every 10 ms while an attack runs."""

    def __init__(self, pid: int, port: int) -> None:
        self.pid, self.port = pid, port
        self._stop = threading.Event()
        self.peak = 0
        self.latencies: list[float] = []

    def __enter__(self) -> Monitor:
        self.rss_before = rss_bytes(self.pid)
        self.cpu_before = cpu_seconds(self.pid)
        self.peak = self.rss_before
        self._threads = [threading.Thread(target=self._sample), threading.Thread(target=self._probe)]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        self.cpu = cpu_seconds(self.pid) - self.cpu_before

    def _sample(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, rss_bytes(self.pid))
            time.sleep(0.005)

    def _probe(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self._stop.is_set():
            start = time.perf_counter()
            try:
                conn.request("GET", "/health/live")
                conn.getresponse().read()
                self.latencies.append(time.perf_counter() - start)
            except OSError:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            time.sleep(0.01)

    def row(self, name: str, codes: Counter) -> str:
        growth = (self.peak - self.rss_before) / 2**20
        p99 = np.percentile(np.asarray(self.latencies) * 1000, 99) if self.latencies else float("nan")
        shown = ", ".join(f"{k}x{v}" for k, v in sorted(codes.items(), key=lambda kv: str(kv[0])))
        return f"| {name} | {shown} | {growth:+.1f} | {p99:.1f} | {self.cpu:.2f} |"


# ---------------------------------------------------------------------------------------------- crafted inputs


def png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def png16_25mp() -> bytes:
    """5000 x 5000 16-bit grayscale, a smooth ramp (compresses to tens of kB)."""
    ramp = (np.arange(5000, dtype=np.uint32) * 13 % 65536).astype(np.uint16)
    return png(np.broadcast_to(ramp, (5000, 5000)).copy())  # [H, W] uint16 -> I;16


def png1bit_25mp() -> bytes:
    """5000 x 5000 1-bit, all white (a few kB)."""
    return png(np.full((5000, 5000), 255, np.uint8), "1")


def small_png() -> bytes:
    return png(np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8))


# ---------------------------------------------------------------------------------------------- attacks


def raw_exchange(port: int, chunks: Iterator[bytes], timeout: float = 30.0) -> str:
    """Send chunks until the server stops reading; return the status code it answered (or what happened)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            for chunk in chunks:
                s.sendall(chunk)
        except OSError:
            pass
        try:
            head = s.recv(65536)
        except OSError as err:
            return type(err).__name__
    return head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/") else "closed"


def flood(prefix: bytes, unit: bytes, total: int) -> Iterator[bytes]:
    yield prefix
    block = unit * (65536 // len(unit))
    for _ in range(total // len(block)):
        yield block


def post(port: int, path: str, body: bytes, headers: dict[str, str], timeout: float = 60) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", path, body=body, headers=headers)
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def run_parallel(n: int, job: Callable[[int], list]) -> Counter:
    results: list = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        out = job(i)
        with lock:
            results.extend(out)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Counter(results)


def attacks(port: int) -> list[tuple[str, Callable[[], Counter]]]:
    mib64 = 64 * 2**20
    img16, img1 = png16_25mp(), png1bit_25mp()
    print(f"inputs: 16-bit 25 MP PNG {len(img16)} bytes, 1-bit 25 MP PNG {len(img1)} bytes")
    tiny = small_png()

    def slow_senders() -> Counter:
        def one(i: int) -> list:
            def trickle() -> Iterator[bytes]:
                yield b"GET /health/live HTTP/1.1\r\n"
                for _ in range(30):
                    yield b"X-a: b\r\n"
                    time.sleep(0.5)

            return [raw_exchange(port, trickle(), timeout=40)]

        return run_parallel(200, one)

    def eight_clients_25mp() -> Counter:
        stop = time.monotonic() + 10

        def one(i: int) -> list:
            codes = []
            while time.monotonic() < stop:
                codes.append(post(port, "/predict", img1, {"Content-Type": "image/png"}))
            return codes

        return run_parallel(8, one)

    def json_64_bombs() -> Counter:
        body = json.dumps({"images": [base64.b64encode(img1).decode()] * 64}).encode()
        return Counter([post(port, "/predict", body, {"Content-Type": "application/json"})])

    def priors() -> Counter:
        bad = {"0": 1e308, "1": 1e308}
        q = "/predict?prior=" + urllib.parse.quote(json.dumps(bad))
        v2 = {
            "inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [0] * 3072}],
            "parameters": {"prior": bad},
        }
        return Counter(
            [
                post(port, q, tiny, {"Content-Type": "image/png"}),
                post(
                    port,
                    "/predict",
                    json.dumps({"images": [base64.b64encode(tiny).decode()], "prior": bad}).encode(),
                    {"Content-Type": "application/json"},
                ),
                post(
                    port,
                    "/v2/models/digits_lt/infer",
                    json.dumps(v2).encode(),
                    {"Content-Type": "application/json"},
                ),
            ]
        )

    return [
        (
            "64 MiB of header lines",
            lambda: Counter([raw_exchange(port, flood(b"GET / HTTP/1.1\r\n", b"X-h: v\r\n", mib64))]),
        ),
        (
            "64 MiB header line",
            lambda: Counter([raw_exchange(port, flood(b"GET / HTTP/1.1\r\nX-h: ", b"v", mib64))]),
        ),
        ("64 MiB URL", lambda: Counter([raw_exchange(port, flood(b"GET /", b"a", mib64))])),
        ("200 slow header senders", slow_senders),
        (
            "16-bit 25 MP PNG, 1 request",
            lambda: Counter([post(port, "/predict", img16, {"Content-Type": "image/png"})]),
        ),
        ("1-bit 25 MP PNG, 8 clients x 10 s", eight_clients_25mp),
        ("JSON with 64 x 25 MP images", json_64_bombs),
        ("overflowing priors (query, JSON, v2)", priors),
    ]


def hostile_table(repo: Path) -> None:
    tiny = small_png()
    with service(repo) as (proc, port):
        for _ in range(200):  # warm-up: every code path once, allocator settled
            post(port, "/predict", tiny, {"Content-Type": "image/png"})
        time.sleep(1)
        warm = rss_bytes(proc.pid)
        print(f"\nRSS after warm-up: {warm / 2**20:.1f} MiB\n")
        print("| attack | status codes | peak RSS growth (MiB) | /health/live p99 (ms) | server CPU s |")
        print("|---|---|---|---|---|")
        for name, attack in attacks(port):
            with Monitor(proc.pid, port) as m:
                codes = attack()
            print(m.row(name, codes), flush=True)
            time.sleep(0.5)
        time.sleep(2)
        after = rss_bytes(proc.pid)
        print(
            f"\nRSS after the run: {after / 2**20:.1f} MiB = {after / warm:.2f}x the RSS after warm-up (target <= 1.25)"
        )


# ---------------------------------------------------------------------------------------------- reload, SIGTERM


def write_version(src: Path, repo: Path, version: int) -> None:
    tmp = repo / "digits_lt" / f".{version}.tmp"
    tmp.mkdir(parents=True)
    shutil.copy(src / "model.onnx", tmp / "model.onnx")
    meta = json.loads((src / mr.METADATA_FILE).read_text())
    meta["version"] = version
    mr.write_metadata(tmp, meta)
    tmp.rename(repo / "digits_lt" / str(version))


def reload_under_load(models: Path, seconds: float) -> None:
    src = models / "digits_lt" / "1"
    with tempfile.TemporaryDirectory() as d:
        repo = Path(d)
        write_version(src, repo, 1)
        with service(repo, RESCOM_POLL_INTERVAL_S="0.5") as (proc, port):
            stop = time.monotonic() + seconds
            tiny = small_png()
            x = json.dumps(
                {
                    "inputs": [
                        {"name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [9] * 3072}
                    ]
                }
            ).encode()

            def fast(i: int) -> list:
                codes = []
                while time.monotonic() < stop:
                    try:
                        codes.append(post(port, "/predict", tiny, {"Content-Type": "image/png"}))
                    except OSError as err:
                        codes.append(type(err).__name__)
                return codes

            def slow(i: int) -> list:
                codes = []
                while time.monotonic() < stop:
                    head = (
                        b"POST /v2/models/digits_lt/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                        % len(x)
                    )

                    def trickle(head: bytes = head) -> Iterator[bytes]:
                        yield head
                        for k in range(0, len(x), len(x) // 8 + 1):
                            yield x[k : k + len(x) // 8 + 1]
                            time.sleep(0.4)  # ~3.2 s per upload: spans a swap

                    codes.append(raw_exchange(port, trickle()))
                return codes

            def reloader() -> None:
                version = 2
                while time.monotonic() < stop - 1:
                    time.sleep(2)
                    write_version(src, repo, version)
                    version += 1

            r = threading.Thread(target=reloader)
            r.start()
            codes = run_parallel(16, lambda i: slow(i) if i < 4 else fast(i))
            r.join()
            failed = sum(v for k, v in codes.items() if str(k) != "200")
            swaps = len(list((repo / "digits_lt").iterdir())) - 1
            print(
                f"\nhot reload every 2 s for {seconds:.0f} s ({swaps} new versions), 16 clients (4 uploading "
                f"over ~3 s): {dict(codes)}; failed: {failed}"
            )


def sigterm_once(models: Path, tiny: bytes) -> dict:
    """One run: 32 clients, a new connection per request, SIGTERM after 1.5 s; what happened to each request."""
    with service(models) as (proc, port):
        answered: Counter = Counter()
        failures = Counter()
        lock = threading.Lock()
        stop = time.monotonic() + 8.5

        def client(i: int) -> list:
            headers = {"Content-Type": "image/png", "Connection": "close"}
            while time.monotonic() < stop:
                try:
                    code = post(port, "/predict", tiny, headers, timeout=30)
                    with lock:
                        answered[code] += 1
                except ConnectionRefusedError:
                    with lock:
                        failures["refused at connect"] += 1
                    time.sleep(0.02)
                except (OSError, http.client.HTTPException):
                    with lock:
                        failures["dropped"] += 1
            return []

        timer = threading.Timer(1.5, proc.send_signal, (signal.SIGTERM,))
        timer.start()
        run_parallel(32, client)
        code = proc.wait(60)
    return {
        "answered": {str(k): v for k, v in answered.items()},
        "refused_at_connect": failures["refused at connect"],
        "dropped": failures["dropped"],
        "exit_status": code,
    }


def sigterm_runs(models: Path, runs: int) -> None:
    """``runs`` SIGTERM runs; printed, and written to ``benchmarks/results/hostile_sigterm.{json,md}``."""
    machine = describe_machine()
    tiny = small_png()
    rows = []
    for run in range(runs):
        row = sigterm_once(models, tiny)
        rows.append(row)
        print(
            f"SIGTERM run {run + 1} (defaults, 32 clients, fresh connections): answered {row['answered']}, "
            f"refused at connect {row['refused_at_connect']}, dropped {row['dropped']}, "
            f"exit status {row['exit_status']}",
            flush=True,
        )
    table = [
        "SIGTERM after 1.5 s under 32 clients, each request on a fresh connection, the service's defaults "
        "(`RESCOM_SHUTDOWN_DELAY_S` 5 s). Dropped = a request sent on an accepted connection that got no answer; "
        "refused at connect = the listener was already closed (the client retries elsewhere).",
        "",
        "| run | answered (status: count) | refused at connect | dropped | exit status |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    for i, row in enumerate(rows, 1):
        answered = ", ".join(f"{k}: {v}" for k, v in sorted(row["answered"].items()))
        table.append(
            f"| {i} | {answered} | {row['refused_at_connect']} | {row['dropped']} | {row['exit_status']} |"
        )
    total = sum(row["dropped"] for row in rows)
    table += ["", f"Dropped in all {len(rows)} runs: **{total}**."]
    write_result("hostile_sigterm", {"runs": rows, "dropped_total": total}, "\n".join(table), machine)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-repository", type=Path, default=ROOT / "models")
    p.add_argument("--reload-s", type=float, default=60.0)
    p.add_argument("--sigterm-runs", type=int, default=5)
    p.add_argument("--only", choices=["table", "reload", "sigterm"], default=None)
    args = p.parse_args()
    print(f"load average before: {os.getloadavg()}")
    if args.only in (None, "table"):
        hostile_table(args.model_repository)
    if args.only in (None, "reload"):
        reload_under_load(args.model_repository, args.reload_s)
    if args.only in (None, "sigterm"):
        sigterm_runs(args.model_repository, args.sigterm_runs)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
