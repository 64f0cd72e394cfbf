"""What the numbers were measured on: CPU, cores, memory, OS, load (for every result under benchmarks/results/)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["busy_cpu_seconds", "describe_machine", "load_average"]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine spent busy so far (all cores; user, system, irq, steal ... but not idle)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    ticks = [int(v) for v in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    busy = sum(ticks[:8]) - idle  # guest time is already inside user
    return busy / os.sysconf("SC_CLK_TCK")


def load_average() -> tuple[float, float, float]:
    """1-, 5- and 15-minute load averages."""
    return os.getloadavg()


def describe_machine() -> dict[str, Any]:
    """A JSON-able description of this machine."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "memory_gib": _memory_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_average_start": [round(x, 2) for x in load_average()],
    }
