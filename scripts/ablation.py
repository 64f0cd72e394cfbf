"""Ablation on your own data: train variants x seeds and tabulate top-1, balanced accuracy and Many/Medium/Few.

    python scripts/ablation.py --config training/configs/digits_lt.yaml --epochs 20,50 --seeds 0,1,2 \\
        --variant rescom: --variant bs:method=balanced_softmax --variant ce:method=ce \\
        --variant warmup:loss.con_warmup_epochs=0.3 --out runs/ablation -- 'data.kwargs={imbalance_factor: 100}'

Each ``--variant NAME:KEY=VALUE,KEY=VALUE`` is a set of ``training/train.py`` overrides (``method=...`` picks the
method; a float in ``(0, 1)`` for ``loss.con_warmup_epochs`` is a fraction of the epochs). Useful axes for
ResCom: ``loss.queue_size`` (K), ``loss.num_negatives`` (Qn), ``loss.con_weight`` (λ), ``loss.temperature`` (τ),
epochs, and ``loss.con_warmup_epochs`` (λ ramps from 0 while the queue fills). Arguments after ``--`` go to
every run. Runs that already have ``metrics.json`` are reused, so an interrupted ablation resumes. Writes
``ablation.json`` and ``ablation.md`` (mean ± std over seeds) into ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("top1", "balanced_acc", "many", "medium", "few")


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``"bs:method=balanced_softmax,loss.con_weight=0"`` -> ``("bs", ["method=...", "loss.con_weight=0"])``."""
    name, sep, rest = text.partition(":")
    if not sep or not name:
        raise SystemExit(f"--variant {text!r}: write NAME:KEY=VALUE,KEY=VALUE (NAME: alone for the recipe)")
    items = [item.strip() for item in rest.split(",") if item.strip()]
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--variant {text!r}: {item!r} is not KEY=VALUE")
    return name, items


def run_args(items: list[str], epochs: int) -> list[str]:
    """Turn a variant's items into train.py arguments (``method=`` -> ``--method``; warm-up fractions)."""
    out = []
    for item in items:
        key, value = item.split("=", 1)
        if key == "method":
            out += ["--method", value]
        elif key == "loss.con_warmup_epochs" and 0 < float(value) < 1:
            out.append(f"{key}={round(float(value) * epochs)}")
        else:
            out.append(item)
    return out


def read_metrics(path: Path) -> dict[str, float]:
    """``top1``, ``balanced_acc`` (mean per-class accuracy), Many / Medium / Few of one run's metrics.json."""
    m = json.loads(path.read_text())
    per_class = m.get("per_class_acc") or []
    return {
        "top1": float(m.get("top1", m.get("acc"))),
        "balanced_acc": float(m.get("balanced_acc", statistics.fmean(per_class) if per_class else "nan")),
        "many": float(m.get("many", "nan")),
        "medium": float(m.get("medium", "nan")),
        "few": float(m.get("few", "nan")),
    }


def train(cmd: list[str], log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": str(ROOT)}
    with log.open("w") as fh:
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False)
    if done.returncode:
        raise SystemExit(f"training failed (exit {done.returncode}); see {log}")


def table(results: dict[str, dict[str, list[dict[str, float]]]]) -> str:
    lines = [
        "| epochs | variant | seeds | " + " | ".join(COLUMNS) + " |",
        "|---|---|---|" + "---|" * len(COLUMNS),
    ]
    for epochs, variants in results.items():
        for name, runs in variants.items():
            cells = []
            for col in COLUMNS:
                values = [r[col] for r in runs]
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.fmean(values):.1f} ± {sd:.1f}")
            lines.append(f"| {epochs} | {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="training/configs/digits_lt.yaml")
    p.add_argument("--epochs", default="20,50", help="comma list of epoch budgets")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variant", action="append", help="NAME:KEY=VALUE,... (repeatable)")
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--collect", action="store_true", help="train nothing: tabulate the runs that finished")
    args = p.parse_args(argv)
    variants = [
        parse_variant(v) for v in args.variant or ["rescom:", "bs:method=balanced_softmax", "ce:method=ce"]
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    for epochs in [int(e) for e in args.epochs.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for name, items in variants:
                run_dir = out / f"{name}_e{epochs}_s{seed}"
                if not (run_dir / "metrics.json").exists():
                    if args.collect:
                        continue
                    cmd = [
                        sys.executable,
                        "training/train.py",
                        "--config",
                        args.config,
                        "--epochs",
                        str(epochs),
                    ]
                    cmd += ["--seed", str(seed), "--no-progress", "--output-dir", str(run_dir.resolve())]
                    train(cmd + run_args(items, epochs) + extra, out / f"{name}_e{epochs}_s{seed}.log")
                metrics = read_metrics(run_dir / "metrics.json")
                results.setdefault(str(epochs), {}).setdefault(name, []).append(metrics)
                print(f"{name} epochs={epochs} seed={seed}: {metrics}", flush=True)
    text = table(results)
    (out / "ablation.json").write_text(
        json.dumps({"argv": argv, "extra": extra, "results": results}, indent=1)
    )
    (out / "ablation.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
