"""Write a training benchmark's result as JSON + Markdown under benchmarks/results/, with machine and load."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

from benchmarks.serving.machine import describe_machine, load_average

__all__ = ["RESULTS_DIR", "command_line", "write_result"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def command_line() -> str:
    """The command as typed (script path relative to the repository), environment thread variables included."""
    import os

    env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ)
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(RESULTS_DIR.parents[1])
    except ValueError:
        pass
    return " ".join(filter(None, [env, "python", shlex.join([str(script), *sys.argv[1:]])]))


def write_result(name: str, payload: dict[str, Any], table: list[str], machine: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json`` and ``<name>.md``; returns the JSON path.

    Args:
        name: File stem, e.g. ``train_step_threads1``.
        payload: The measured numbers (JSON-able).
        table: Markdown lines with the headline figures.
        machine: :func:`describe_machine` taken when the run started (its load average is the start load).
    """
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    record = {
        "command": command_line(),
        "machine": machine,
        "load_average_end": [round(x, 2) for x in load_average()],
        **payload,
    }
    json_path = RESULTS_DIR / f"{name}.json"
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        f"# {name}",
        "",
        f"Command: `{record['command']}`",
        "",
        f"Machine: {machine['cpu']}, {machine['usable_cpus']} usable CPUs of {machine['logical_cpus']}, "
        f"{machine['memory_gib']} GiB, {machine['os']}, Python {machine['python']}.",
        f"Load average (1/5/15 min): {machine['load_average_start']} at the start, "
        f"{record['load_average_end']} at the end.",
        "",
        *table,
        "",
    ]
    (RESULTS_DIR / f"{name}.md").write_text("\n".join(lines))
    return json_path


def machine_now() -> dict[str, Any]:
    """:func:`describe_machine` (re-exported so the scripts import one module)."""
    return describe_machine()
