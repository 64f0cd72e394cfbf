"""Overload behaviour of the service: a burst far above capacity, then a soak; sheds load with fast 503s, no leaks.

    python benchmarks/overload.py                      # bundled models/digits_lt, ~1-2 min on 2 cores
    python benchmarks/overload.py --total 2000         # quicker
    python benchmarks/overload.py --json out.json      # also write the figures (out.json + out.md)
    python benchmarks/overload.py --render-only benchmarks/results/overload.json   # rewrite the .md from the JSON

What it does (bounded: ``--total`` requests in all, every phase time-limited):

1. starts ``python -m service`` on 127.0.0.1 (a free port) with a small queue (``--queue-size``) and a queue
   deadline (``--deadline-s``), waits for readiness, warms up, reads the server's RSS (``/proc/PID/status``);
2. measures capacity with a closed loop whose concurrency fits in the queue (no rejections), unless ``--rate``;
3. **burst**: an open loop at ``--overload`` x capacity for ``--burst-s`` seconds over at most ``--connections``
   keep-alive connections (raw asyncio HTTP/1.1, so the client costs little CPU): every request is sent at its
   scheduled time whatever happened to the earlier ones. Reads the RSS again;
4. **soak**: the same open loop until ``--total`` requests have been sent in all; reads the RSS a last time and
   checks that the server is still ready and still answers a prediction correctly.

It prints the offered load, how many requests were served / rejected (503) / expired in the queue (504), how fast
rejections came back (p50/p99), the p99 latency of admitted requests against their deadline, and the RSS before /
after the burst / after everything. Exit status 1 when any response is a 5xx other than 503/504, a 503 lacks
``Retry-After``, a connection fails, the server is unhealthy afterwards, or the RSS grew by more than
``--max-rss-growth-mib`` between the warmed-up server and the end.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rescom import model_repository as mr  # noqa: E402
from rescom_dev.machine import describe_machine, load_average  # noqa: E402
from rescom_dev.results import command_line, machine_lines  # noqa: E402
from rescom_dev.servers import free_port, service_process  # noqa: E402

# ---------------------------------------------------------------------------------------------- server


def http(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One blocking request (for probes): (status, body)."""
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (``VmRSS`` of ``/proc/PID/status``)."""
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    if m is None:
        raise RuntimeError(f"no VmRSS for pid {pid}")
    return int(m.group(1)) / 1024


@contextlib.contextmanager
def service(repo: Path, model: str, env: dict[str, str]) -> Iterator[tuple[str, subprocess.Popen]]:
    """``python -m service`` on 127.0.0.1 and a free port; yields (URL, process); SIGTERM and wait afterwards."""
    port = free_port()
    full_env = {"RESCOM_LOG_LEVEL": "warning", **env}
    with service_process(
        repo, port, full_env, ready_timeout=120, extra=("--model", model), output=None, graceful_s=60
    ) as proc:
        yield f"http://127.0.0.1:{port}", proc


# ---------------------------------------------------------------------------------------------- client


@dataclass
class Phase:
    """What one phase sent and got back."""

    name: str
    sent: int = 0
    seconds: float = 0.0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    latency_by_status: dict[int, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    missing_retry_after: int = 0
    transport_errors: int = 0
    late_sends: int = (
        0  # sent more than 10 ms after their scheduled time (client or connection pool saturated)
    )

    def quantile_ms(self, status: int, q: float) -> float:
        values = self.latency_by_status.get(status)
        return float("nan") if not values else 1000 * float(np.quantile(np.asarray(values), q))

    @property
    def offered_per_s(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


class RawClient:
    """Minimal keep-alive HTTP/1.1 client on asyncio streams for one fixed request (cheap per request)."""

    def __init__(self, host: str, port: int, request: bytes, max_connections: int) -> None:
        self.host, self.port, self.request = host, port, request
        self.max_connections = max_connections
        self.idle: collections.deque[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = collections.deque()
        self.open = 0
        self.available = asyncio.Condition()

    async def _acquire(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with self.available:
            while not self.idle and self.open >= self.max_connections:
                await self.available.wait()
            if self.idle:
                return self.idle.pop()
            self.open += 1
        try:
            return await asyncio.open_connection(self.host, self.port)
        except OSError:
            async with self.available:
                self.open -= 1
                self.available.notify()
            raise

    async def _release(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> None:
        async with self.available:
            if conn is None:
                self.open -= 1
            else:
                self.idle.append(conn)
            self.available.notify()

    async def send(self, phase: Phase) -> None:
        """One request; records status, latency (from the moment it is written) and ``Retry-After``."""
        conn = None
        try:
            conn = await self._acquire()
            reader, writer = conn
            start = time.perf_counter()
            writer.write(self.request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            if m:
                await reader.readexactly(int(m.group(1)))
            elapsed = time.perf_counter() - start
            phase.statuses[status] += 1
            phase.latency_by_status[status].append(elapsed)
            if status == 503 and not re.search(rb"(?i)\r\nretry-after: *\d+", head):
                phase.missing_retry_after += 1
            if re.search(rb"(?i)\r\nconnection: *close", head):
                writer.close()
                conn = None
        except (OSError, asyncio.IncompleteReadError, ValueError):
            phase.transport_errors += 1
            if conn is not None:
                conn[1].close()
            conn = None
        await self._release(conn)

    async def close(self) -> None:
        while self.idle:
            _, writer = self.idle.pop()
            writer.close()


async def open_loop(client: RawClient, phase: Phase, rate: float, seconds: float, limit: int) -> None:
    """Send at ``rate`` requests/s for ``seconds`` (at most ``limit`` requests), never waiting for answers."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    n = min(limit, int(rate * seconds))
    start = loop.time()
    for i in range(n):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.01:
            phase.late_sends += 1
        task = loop.create_task(client.send(phase))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        phase.sent += 1
    phase.seconds = loop.time() - start
    if tasks:
        await asyncio.gather(*tasks)


async def closed_loop(client: RawClient, phase: Phase, concurrency: int, seconds: float) -> None:
    """``concurrency`` workers, each sending its next request when the previous one is answered."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds

    async def worker() -> None:
        while loop.time() < end:
            phase.sent += 1
            await client.send(phase)

    start = loop.time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.seconds = loop.time() - start


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-repository", default=str(ROOT / "models"))
    p.add_argument("--model", default="digits_lt")
    p.add_argument("--queue-size", type=int, default=32, help="RESCOM_MAX_QUEUE_SIZE (images)")
    p.add_argument("--max-batch-size", type=int, default=16, help="RESCOM_MAX_BATCH_SIZE")
    p.add_argument("--deadline-s", type=float, default=1.0, help="RESCOM_REQUEST_TIMEOUT_S (queue deadline)")
    p.add_argument(
        "--rate", type=float, default=None, help="offered requests/s (default: --overload x capacity)"
    )
    p.add_argument("--overload", type=float, default=4.0, help="offered load as a multiple of capacity")
    p.add_argument("--burst-s", type=float, default=5.0, help="length of the burst")
    p.add_argument("--total", type=int, default=20_000, help="requests in all phases together")
    p.add_argument("--connections", type=int, default=256, help="most client connections at once")
    p.add_argument("--max-rss-growth-mib", type=float, default=64.0, help="fail beyond this RSS growth")
    p.add_argument(
        "--json", default=None, help="also write the figures to this file, and the Markdown next to it"
    )
    p.add_argument(
        "--render-only",
        metavar="JSON",
        default=None,
        help="measure nothing: write the Markdown next to this JSON of an earlier run",
    )
    p.add_argument("--env", action="append", default=[], help="extra RESCOM_X=Y for the server (repeatable)")
    return p.parse_args(argv)


def image_body(repo: Path, model: str) -> tuple[bytes, int]:
    """A PNG of the model's input size (seeded) and its class count."""
    meta = mr.read_metadata(repo, model, mr.latest_version(repo, model))
    size = meta["preprocess"]["crop"]
    rng = np.random.default_rng(0)
    arr = np.clip(rng.integers(0, 256, (1, 1, 3)) + rng.integers(-30, 31, (size, size, 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue(), len(meta["class_names"])


async def _run(url: str, pid: int, body: bytes, args: argparse.Namespace, report: dict) -> list[Phase]:
    host, port = url.removeprefix("http://").split(":")
    request = (
        f"POST /predict?model={args.model}&top_k=1 HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: image/png\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    client = RawClient(host, int(port), request, args.connections)
    phases: list[Phase] = []
    try:
        warm = Phase("warm-up")
        await closed_loop(client, warm, min(8, args.queue_size), 1.0)
        phases.append(warm)
        report["rss_before_mib"] = rss_mib(pid)
        if args.rate is None:
            probe = Phase("capacity")
            await closed_loop(client, probe, max(1, min(args.queue_size // 2, 16)), 3.0)
            phases.append(probe)
            capacity = probe.statuses[200] / probe.seconds
            rate = max(1.0, args.overload * capacity)
            report["capacity_per_s"] = capacity
        else:
            rate = args.rate
        report["target_rate_per_s"] = rate
        used = sum(p.sent for p in phases)
        burst = Phase("burst")
        await open_loop(client, burst, rate, args.burst_s, max(0, args.total - used))
        phases.append(burst)
        report["rss_after_burst_mib"] = rss_mib(pid)
        used += burst.sent
        if args.total > used:
            soak = Phase("soak")
            await open_loop(client, soak, rate, (args.total - used) / rate + 1, args.total - used)
            phases.append(soak)
        report["rss_after_total_mib"] = rss_mib(pid)
    finally:
        await client.close()
    return phases


def run(args: argparse.Namespace) -> dict:
    """Run everything; returns the figures (``report["ok"]`` says whether every check passed)."""
    repo = Path(args.model_repository)
    if not (repo / args.model).is_dir():
        raise SystemExit(f"no model {args.model!r} in {repo}")
    body, num_classes = image_body(repo, args.model)
    env = {
        "RESCOM_MAX_QUEUE_SIZE": str(args.queue_size),
        "RESCOM_MAX_BATCH_SIZE": str(args.max_batch_size),
        "RESCOM_MAX_IMAGES_PER_REQUEST": str(min(args.queue_size, 64)),
        "RESCOM_REQUEST_TIMEOUT_S": str(args.deadline_s),
        **dict(item.partition("=")[::2] for item in args.env),
    }
    report: dict = {
        "command": command_line(),
        "cpus": len(os.sched_getaffinity(0)),
        "machine": describe_machine(),
    }
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    with service(repo, args.model, env) as (url, proc):
        good = http(
            url + f"/predict?model={args.model}&top_k={num_classes}", body, {"Content-Type": "image/png"}
        )
        phases = runner(_run(url, proc.pid, body, args, report))
        ready = http(url + "/health/ready")[0]
        again = http(
            url + f"/predict?model={args.model}&top_k={num_classes}", body, {"Content-Type": "image/png"}
        )
        same = (
            good[0] == again[0] == 200
            and json.loads(good[1])["predictions"] == json.loads(again[1])["predictions"]
        )
        report["healthy_after"] = ready == 200 and same
    loaded = [p for p in phases if p.name in ("burst", "soak")]
    statuses: collections.Counter[int] = collections.Counter()
    for p in phases:
        statuses.update(p.statuses)
    rejected = [x for p in loaded for x in p.latency_by_status.get(503, [])]
    admitted = [x for p in loaded for x in p.latency_by_status.get(200, [])]
    burst = next(p for p in phases if p.name == "burst")
    q = lambda xs, v: 1000 * float(np.quantile(np.asarray(xs), v)) if xs else float("nan")  # noqa: E731
    report.update(
        requests=sum(p.sent for p in phases),
        statuses={str(k): v for k, v in sorted(statuses.items())},
        burst={
            "offered_per_s": burst.offered_per_s,
            "seconds": burst.seconds,
            "sent": burst.sent,
            "served": burst.statuses[200],
            "rejected_503": burst.statuses[503],
            "expired_504": burst.statuses[504],
            "late_sends": burst.late_sends,
        },
        overload_phases_sent=sum(p.sent for p in loaded),
        served=sum(p.statuses[200] for p in loaded),
        rejected_503=sum(p.statuses[503] for p in loaded),
        expired_504=sum(p.statuses[504] for p in loaded),
        reject_p50_ms=q(rejected, 0.5),
        reject_p99_ms=q(rejected, 0.99),
        admitted_p50_ms=q(admitted, 0.5),
        admitted_p99_ms=q(admitted, 0.99),
        admitted_max_ms=1000 * max(admitted) if admitted else float("nan"),
        deadline_ms=1000 * args.deadline_s,
        missing_retry_after=sum(p.missing_retry_after for p in phases),
        transport_errors=sum(p.transport_errors for p in phases),
        rss_growth_mib=report["rss_after_total_mib"] - report["rss_before_mib"],
        max_rss_growth_mib=args.max_rss_growth_mib,
        load_average_end=[round(x, 2) for x in load_average()],
    )
    bad_5xx = {k: v for k, v in statuses.items() if k >= 500 and k not in (503, 504)}
    failures = []
    if bad_5xx:
        failures.append(f"5xx other than 503/504: {bad_5xx}")
    if report["missing_retry_after"]:
        failures.append(f"{report['missing_retry_after']} responses 503 without Retry-After")
    if report["transport_errors"]:
        failures.append(f"{report['transport_errors']} connection errors")
    if not report["healthy_after"]:
        failures.append("the server was not healthy afterwards")
    if report["rss_growth_mib"] > args.max_rss_growth_mib:
        failures.append(
            f"RSS grew by {report['rss_growth_mib']:.1f} MiB (bound {args.max_rss_growth_mib} MiB)"
        )
    report["failures"] = failures
    report["ok"] = not failures
    report["phases"] = [
        {
            "name": p.name,
            "sent": p.sent,
            "seconds": p.seconds,
            "statuses": dict(p.statuses),
            "late": p.late_sends,
        }
        for p in phases
    ]
    return report


def print_report(r: dict) -> None:
    b = r["burst"]
    print(f"[overload] {r['command']}")
    print(f"[overload] {r['cpus']} usable CPUs; {r['requests']} requests in all; statuses {r['statuses']}")
    if "capacity_per_s" in r:
        print(f"[overload] capacity (closed loop, no rejections): {r['capacity_per_s']:.0f} req/s")
    print(
        f"[overload] burst: offered {b['offered_per_s']:.0f} req/s for {b['seconds']:.1f} s ({b['sent']} requests, "
        f"target {r['target_rate_per_s']:.0f} req/s, {b['late_sends']} sent late): served {b['served']}, "
        f"rejected 503 {b['rejected_503']}, expired 504 {b['expired_504']}"
    )
    print(
        f"[overload] burst + soak ({r['overload_phases_sent']} requests): served {r['served']}, rejected 503 "
        f"{r['rejected_503']} (all with Retry-After: {r['missing_retry_after'] == 0}), expired 504 "
        f"{r['expired_504']}, connection errors {r['transport_errors']}"
    )
    print(
        f"[overload] rejections answered in p50 {r['reject_p50_ms']:.1f} ms, p99 {r['reject_p99_ms']:.1f} ms"
    )
    print(
        f"[overload] admitted: p50 {r['admitted_p50_ms']:.1f} ms, p99 {r['admitted_p99_ms']:.1f} ms, max "
        f"{r['admitted_max_ms']:.1f} ms; queue deadline {r['deadline_ms']:.0f} ms"
    )
    print(
        f"[overload] server RSS: before {r['rss_before_mib']:.1f} MiB, after the burst "
        f"{r['rss_after_burst_mib']:.1f} MiB, after all {r['requests']} requests {r['rss_after_total_mib']:.1f} MiB "
        f"(growth {r['rss_growth_mib']:+.1f} MiB, bound {r['max_rss_growth_mib']:.0f} MiB)"
    )
    print(f"[overload] healthy afterwards: {r['healthy_after']}")
    print("[overload] OK" if r["ok"] else "[overload] FAILED: " + "; ".join(r["failures"]))


def _statuses(counts: dict) -> str:
    """``{"200": 582, "503": 10}`` as ``200 x582, 503 x10``."""
    return ", ".join(f"{status} x{n}" for status, n in sorted(counts.items()))


def _machine_lines(r: dict) -> list[str]:
    """The machine and load-average lines of the Markdown; runs before they were recorded say so."""
    m = r.get("machine")
    if m is None:
        return [
            f"- machine: not recorded by this run ({r['cpus']} usable CPUs); rerun the command to record it",
            "- load average: not recorded by this run; rerun the command to record it",
        ]
    return machine_lines(m, r["load_average_end"])


def markdown_report(r: dict) -> str:
    """``overload.md``: the command, the machine and its load, then the phases and the checks of report ``r``."""
    b = r["burst"]
    capacity = f"{r['capacity_per_s']:.0f} req/s" if "capacity_per_s" in r else "not measured (--rate given)"
    lines = [
        "# overload",
        "",
        f"- command: `{r['command']}`",
        *_machine_lines(r),
        "",
        "| phase | sent | seconds | statuses | sent late |",
        "| --- | ---: | ---: | --- | ---: |",
        *(
            f"| {p['name']} | {p['sent']} | {p['seconds']:.1f} | {_statuses(p['statuses'])} | {p['late']} |"
            for p in r["phases"]
        ),
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| capacity (closed loop, no rejections) | {capacity} |",
        f"| burst: offered / target | {b['offered_per_s']:.0f} / {r['target_rate_per_s']:.0f} req/s for "
        f"{b['seconds']:.1f} s |",
        f"| burst + soak: served / rejected 503 / expired 504 | {r['served']} / {r['rejected_503']} / "
        f"{r['expired_504']} of {r['overload_phases_sent']} |",
        f"| 503 without Retry-After, connection errors | {r['missing_retry_after']}, {r['transport_errors']} |",
        f"| rejections answered in p50 / p99 | {r['reject_p50_ms']:.1f} / {r['reject_p99_ms']:.1f} ms |",
        f"| admitted p50 / p99 / max (queue deadline {r['deadline_ms']:.0f} ms) | {r['admitted_p50_ms']:.1f} / "
        f"{r['admitted_p99_ms']:.1f} / {r['admitted_max_ms']:.1f} ms |",
        f"| server RSS before / after the burst / after all | {r['rss_before_mib']:.1f} / "
        f"{r['rss_after_burst_mib']:.1f} / {r['rss_after_total_mib']:.1f} MiB |",
        f"| RSS growth (bound) | {r['rss_growth_mib']:+.1f} MiB ({r['max_rss_growth_mib']:.0f} MiB) |",
        f"| healthy afterwards | {r['healthy_after']} |",
        "",
        "OK" if r["ok"] else "FAILED: " + "; ".join(r["failures"]),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        source = Path(args.render_only)
        source.with_suffix(".md").write_text(markdown_report(json.loads(source.read_text())))
        print(f"[overload] wrote {source.with_suffix('.md')} from {source} (nothing measured)")
        return 0
    report = run(args)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        Path(args.json).with_suffix(".md").write_text(markdown_report(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
