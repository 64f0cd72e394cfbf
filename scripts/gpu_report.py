"""Collect the GPU check's JSON files into benchmarks/results/gpu.md and gpu.json.

    python scripts/gpu_report.py --run-dir runs/gpu_check --out benchmarks/results/gpu [--dry-run]

Reads what ``scripts/gpu_check.sh`` wrote into the run folder (``env*.json``, ``train.json``, ``ddp.json``,
``loss_scale.txt``, ``placement_*.json``, ``serve_*.json``, ``steps.tsv``) and renders one Markdown page. Missing
pieces are shown as such (a step that failed or was skipped), never invented. A dry run (CPU) writes its page
to the run folder, not to benchmarks/results.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", required=True)
    p.add_argument("--out", required=True, help="path without suffix: OUT.md and OUT.json are written")
    p.add_argument("--dry-run", action="store_true", help="label the page as a CPU dry run")
    return p.parse_args(argv)


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def collect(run: Path) -> dict[str, Any]:
    """Everything the check wrote, by name."""
    data: dict[str, Any] = {
        "env_train": _load(run / "env_train.json"),
        "env_serve": _load(run / "env_serve.json"),
        "train": _load(run / "train.json"),
        "ddp": _load(run / "ddp.json"),
        "placement": {
            p.stem.removeprefix("placement_"): _load(p) for p in sorted(run.glob("placement_*.json"))
        },
        "serve": {p.stem.removeprefix("serve_"): _load(p) for p in sorted(run.glob("serve_*.json"))},
        "steps": [],
    }
    loss = run / "loss_scale.txt"
    data["loss_scale"] = loss.read_text().strip() if loss.exists() else None
    steps = run / "steps.tsv"
    if steps.exists():
        for line in steps.read_text().splitlines():
            name, status, seconds, *note = line.split("\t")
            data["steps"].append(
                {"step": name, "status": status, "seconds": float(seconds), "note": "".join(note)}
            )
    return data


def _env_lines(data: dict[str, Any]) -> list[str]:
    torch_env = (data.get("env_train") or {}).get("torch") or {}
    ort_env = (data.get("env_serve") or {}).get("onnxruntime") or {}
    smi = (data.get("env_train") or {}).get("nvidia_smi")
    return [
        f"- GPU (nvidia-smi: name, driver, memory, capability): {smi or 'not found'}",
        f"- torch {torch_env.get('torch', '?')}, CUDA {torch_env.get('torch_cuda', '?')}, cuDNN "
        f"{torch_env.get('cudnn', '?')}, NCCL {torch_env.get('nccl', '?')}, bf16 {torch_env.get('bf16', '?')}",
        f"- ONNX Runtime {ort_env.get('onnxruntime', '?')} ({', '.join(ort_env.get('distributions', [])) or '?'}), "
        f"providers: {', '.join(ort_env.get('providers', [])) or '?'}; TensorRT library: "
        f"{ort_env.get('tensorrt_library') or 'not installed'}",
    ]


def _train_lines(data: dict[str, Any]) -> list[str]:
    train = data.get("train")
    if not train:
        return ["Not measured (the step failed or did not run)."]
    lines = [
        f"ResNet-32, C=100, batch 2 x {train['batch']}, channels_last {train['channels_last']}, {train['device']}:",
        "",
        "| autocast | method | img/s | ms/step | final loss |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in train["rows"]:
        lines.append(
            f"| {r['amp']} | {r['method']} | {r['img_per_s']:.0f} | {r['ms_per_step']:.2f} | {r['final_loss']:.3f} |"
        )
    return lines


def _serve_lines(data: dict[str, Any]) -> list[str]:
    if not data["serve"]:
        return ["Not measured (the step failed or did not run)."]
    lines = [
        "| providers | service runs on | raw ORT runs on | batch | concurrency | service img/s | raw ORT img/s "
        "| service / raw | p50 ms | p99 ms | mean batch | errors |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in data["serve"].items():
        if not s:
            lines.append(f"| {name} | (failed) | | | | | | | | | | |")
            continue
        ph = s.get("phases", {}).get("batching", {})
        lines.append(
            f"| {s['providers']} | {s['service_provider']} | {s['raw_provider']} | {s['max_batch_size']} | "
            f"{s['concurrency']} | {ph.get('img_per_s', float('nan')):.0f} | {s['raw_ort_img_per_s']:.0f} | "
            f"{s.get('service_vs_raw', float('nan')):.2f} | {ph.get('p50_ms', float('nan')):.1f} | "
            f"{ph.get('p99_ms', float('nan')):.1f} | {ph.get('mean_batch', float('nan')):.1f} | {ph.get('errors', '?')} |"
        )
    return lines


def render(data: dict[str, Any], dry_run: bool) -> str:
    """The Markdown page."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    kind = (
        "CPU DRY RUN (no GPU: commands, flags and imports only; the figures mean nothing)"
        if dry_run
        else "GPU"
    )
    out = [
        "# GPU check",
        "",
        f"Generated by `bash scripts/gpu_check.sh` on {when}: {kind}. Raw numbers: `gpu.json`.",
        "",
        "## Environment",
        "",
        *_env_lines(data),
        "",
        "## Steps",
        "",
        "| step | status | seconds | note |",
        "| --- | --- | ---: | --- |",
        *[f"| {s['step']} | {s['status']} | {s['seconds']:.0f} | {s['note']} |" for s in data["steps"]],
        "",
        "## Training step, mixed precision (ResCom vs two-view CE)",
        "",
        *_train_lines(data),
        "",
        "## DDP, 2 ranks",
        "",
        f"`scripts/ddp_check.py`: {json.dumps(data['ddp']) if data['ddp'] else 'not run or failed'}",
        "",
        "## ResCom loss at iNaturalist scale (C=8142, K=8, Qn=2000, batch 2 x 128)",
        "",
        "```",
        data["loss_scale"] or "not run or failed",
        "```",
        "",
        "## Node placement (ONNX Runtime profile of one batch)",
        "",
        *[
            f"- {name}: runs on {p['actual']}, nodes per provider {p['nodes_per_provider']}, "
            f"CPU fallbacks: {len(p['fallbacks'])}"
            for name, p in data["placement"].items()
            if p
        ],
        "",
        "## Serving: the service vs raw ONNX Runtime at the same batch (ResNet-50, 224 x 224)",
        "",
        *_serve_lines(data),
        "",
        "Target (issue 12): service >= 0.9 x raw ORT-CUDA at batch 64.",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = collect(Path(args.run_dir))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(render(data, args.dry_run))
    out.with_suffix(".json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"[report] wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
