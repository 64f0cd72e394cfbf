"""One writer for ``benchmarks/results/NAME.{json,md}``: the figures, the command, the machine and its load.

Every figure the README quotes comes from such a pair, written by the script that measured it (``make results``).
The JSON holds ``{"name", "command", "utc", "machine", "load_average_end", "figures"}``; the Markdown repeats the
header and then the script's own table.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from rescom_dev.machine import load_average

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def command_line() -> str:
    """How this process was started, with the interpreter shown as ``python``, paths relative to the root and the
    thread-count variables that were set (they change the figures)."""
    env = [f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ]
    args = []
    for arg in sys.argv:
        path = Path(arg).resolve() if Path(arg).is_absolute() else None
        args.append(str(path.relative_to(ROOT)) if path is not None and ROOT in path.parents else arg)
    return " ".join([*env, shlex.join(["python", *args])])


def machine_lines(machine: dict[str, Any], load_average_end: list[float]) -> list[str]:
    """The Markdown lines that say where a figure was measured: the machine, and its load at start and end.

    Args:
        machine: :func:`rescom_dev.machine.describe_machine`, taken when the measurement started.
        load_average_end: :func:`rescom_dev.machine.load_average` when it ended.
    """
    m = machine
    return [
        f"- machine: {m['cpu']} ({m['usable_cpus']} usable CPUs, {m['memory_gib']} GiB), Python {m['python']}",
        f"- load average (1, 5, 15 min) at start {m['load_average_start']}, at end {load_average_end}",
    ]


def write_result(
    name: str, figures: dict[str, Any], table_md: str, machine: dict[str, Any], out_dir: Path = RESULTS
) -> tuple[Path, Path]:
    """Write ``out_dir/NAME.json`` and ``out_dir/NAME.md``; returns both paths.

    Args:
        name: file stem, e.g. ``"digits_methods"``.
        figures: the measured numbers (JSON-able).
        table_md: the Markdown body (a table of ``figures``) placed under the header.
        machine: :func:`rescom_dev.machine.describe_machine` taken when the measurement started (its load
            average is the one at the start).
    """
    record = {
        "name": name,
        "command": command_line(),
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine,
        "load_average_end": [round(x, 2) for x in load_average()],
        "figures": figures,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    header = (
        f"# {name}\n\n"
        f"- command: `{record['command']}`\n"
        f"- measured: {record['utc']} on {machine['cpu']} ({machine['usable_cpus']} usable CPUs, "
        f"{machine['memory_gib']} GiB), Python {machine['python']}\n"
        f"- load average (1, 5, 15 min) at start {machine['load_average_start']}, at end "
        f"{record['load_average_end']}\n\n"
    )
    md_path.write_text(header + table_md.rstrip() + "\n")
    return json_path, md_path
