"""digits-LT: ResCom against its two baselines on the same recipe (seed, epochs), with the wall time of each run.

    python benchmarks/digits_methods.py                      # rescom, balanced_softmax, ce (CPU, minutes each)
    python benchmarks/digits_methods.py --methods rescom     # only the training time of the default recipe
    python benchmarks/digits_methods.py -- --epochs 2        # extra training/train.py arguments after --

Runs ``training/train.py --config training/configs/digits_lt.yaml --method M`` once per method in a subprocess,
reads each run's ``metrics.json`` (test top-1 and Many / Medium / Few) and writes
``benchmarks/results/digits_methods.{json,md}`` (the figures the README's Benchmarks section quotes).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rescom_dev.machine import describe_machine  # noqa: E402
from rescom_dev.results import RESULTS, write_result  # noqa: E402

CONFIG = "training/configs/digits_lt.yaml"
METHODS = ("rescom", "balanced_softmax", "ce")


def train_once(method: str, out_dir: Path, extra: list[str]) -> dict:
    """One training run; returns ``{"method", "wall_s", "acc", "many", "medium", "few"}``."""
    cmd = [sys.executable, "training/train.py", "--config", CONFIG, "--method", method]
    cmd += ["--output-dir", str(out_dir), "--no-progress", *extra]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    wall = time.perf_counter() - start
    metrics = json.loads((out_dir / "metrics.json").read_text())
    return {
        "method": method,
        "wall_s": round(wall, 1),
        **{k: metrics[k] for k in ("acc", "many", "medium", "few")},
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(rows: list[dict]) -> str:
    """The Markdown table of the runs."""
    lines = [
        "| method | test top-1 | Many | Medium | Few | wall |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        minutes, seconds = divmod(round(r["wall_s"]), 60)
        groups = " | ".join(_pct(r[k]) for k in ("acc", "many", "medium", "few"))
        lines.append(f"| {r['method']} | {groups} | {minutes} min {seconds} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--results-dir", type=Path, default=RESULTS, help="where digits_methods.{json,md} go")
    p.add_argument("overrides", nargs="*", help="extra training/train.py arguments, e.g. --epochs 2")
    args = p.parse_args(argv)
    machine = describe_machine()
    with tempfile.TemporaryDirectory(prefix="digits-methods-") as tmp:
        rows = [train_once(m, Path(tmp) / m, args.overrides) for m in args.methods]
    print(table(rows))
    write_result("digits_methods", {"config": CONFIG, "runs": rows}, table(rows), machine, args.results_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
