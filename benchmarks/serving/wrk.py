"""Closed-loop load with ``wrk`` (Debian package; C, epoll): one point = one concurrency for a fixed time."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.serving.config import SERVING_DIR

__all__ = ["LoadPoint", "run_wrk", "wrk_version"]

LUA = SERVING_DIR / "post.lua"


@dataclass
class LoadPoint:
    """What wrk measured at one concurrency (latencies in ms, of every completed response)."""

    concurrency: int
    duration_s: float
    requests: int  # completed responses, any status
    ok: int  # 2xx/3xx responses
    throughput: float  # ok responses per second
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float
    errors: dict[str, int]  # connect, read, write, status (>= 400), timeout

    @property
    def error_count(self) -> int:
        """All errors together."""
        return sum(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)


def wrk_version() -> str | None:
    """``wrk``'s version line, or ``None`` when it is not installed."""
    exe = shutil.which("wrk")
    if exe is None:
        return None
    res = subprocess.run([exe, "--version"], capture_output=True, text=True)
    return (res.stdout or res.stderr).strip().splitlines()[0]


def run_wrk(
    base_url: str,
    manifest: Path,
    concurrency: int,
    duration_s: float,
    *,
    threads: int = 1,
    timeout_s: float = 10.0,
    log: Path | None = None,
) -> LoadPoint:
    """Run wrk against ``base_url`` with the requests of ``manifest`` and return the summary.

    Raises:
        RuntimeError: wrk is missing or printed no summary.
    """
    exe = shutil.which("wrk")
    if exe is None:
        raise RuntimeError("wrk is not installed (apt-get install -y wrk)")
    cmd = [
        exe,
        f"-t{max(1, min(threads, concurrency))}",
        f"-c{concurrency}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={max(1, round(timeout_s))}s",
        "-s",
        str(LUA),
        base_url,
        "--",
        str(manifest),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + timeout_s + 60)
    if log is not None:
        with log.open("a") as f:
            f.write(f"$ {' '.join(cmd)}\n{res.stdout}{res.stderr}\n")
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary (rc {res.returncode}): {res.stderr.strip()[-300:]}")
    s = json.loads(line.removeprefix("WRK_JSON "))
    duration = s["duration_us"] / 1e6
    ok = max(0, s["requests"] - s["status"])
    return LoadPoint(
        concurrency=concurrency,
        duration_s=duration,
        requests=s["requests"],
        ok=ok,
        throughput=ok / duration if duration > 0 else 0.0,
        p50_ms=s["p50_us"] / 1e3,
        p90_ms=s["p90_us"] / 1e3,
        p99_ms=s["p99_us"] / 1e3,
        p999_ms=s["p999_us"] / 1e3,
        max_ms=s["max_us"] / 1e3,
        mean_ms=s["mean_us"] / 1e3,
        errors={k: int(s[k]) for k in ("connect", "read", "write", "status", "timeout")},
    )
