"""Training-step throughput with mixed precision: ResCom vs two-view cross-entropy, in images per second.

    python scripts/gpu_train_check.py --device cuda --amp bf16,fp16 --channels-last [--json FILE]

For each autocast dtype in ``--amp`` and each method (``ce``, ``rescom``): a ResNet-32 on CIFAR-shaped
synthetic data (2 views x ``--batch`` images of 32 x 32, C = 100, the CIFAR-100-LT loss settings: K=10, Qp=1,
Qn=400, tau=0.2, lambda=0.5), forward + loss + backward + SGD step; fp16 uses a ``GradScaler``. The median step
time of ``--steps`` timed steps (after ``--warmup``) gives images/s (2b images per step). The loss of the last
step must be finite. Exit 1 when a loss is not finite or the device is not the one asked for.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.train_step import synthetic_problem
from training.engine import optimizer_step

AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--amp", default="bf16,fp16", help="comma-separated: none, bf16, fp16")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--arch", default="resnet32")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--batch", type=int, default=128, help="images per view")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    args.amp = [a.strip() for a in args.amp.split(",") if a.strip()]
    bad = [a for a in args.amp if a not in AMP]
    if bad:
        p.error(f"--amp takes none, bf16 or fp16 (comma-separated), got {', '.join(bad)}")
    return args


def measure(method: str, amp: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Median step time and images/s of one method under one autocast dtype."""
    model, criterion, optimizer, images, labels = synthetic_problem(method, args, device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    images = images.contiguous(memory_format=memory_format)  # [2b, 3, H, W]
    scaler = torch.amp.GradScaler(device.type) if AMP[amp] == torch.float16 else None
    times, loss = [], torch.zeros(())
    for step in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=AMP[amp] or torch.float32, enabled=AMP[amp] is not None):
            loss = criterion(model(images), labels)["loss"]
        optimizer_step(loss, model, optimizer, scaler, grad_clip=None)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {
        "method": method,
        "amp": amp,
        "ms_per_step": 1000 * median,
        "img_per_s": 2 * args.batch / median,
        "final_loss": float(loss.detach()),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("[train] FAIL: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
            return 1
        torch.backends.cudnn.benchmark = True
    print(
        f"[train] device {device}, torch {torch.__version__}, {args.arch}, C={args.classes}, batch 2x{args.batch} "
        f"at {args.size}px, channels_last {args.channels_last}, {args.steps} timed steps"
    )
    rows, ok = [], True
    for amp in args.amp:
        for method in ("ce", "rescom"):
            row = measure(method, amp, args, device)
            ok &= math.isfinite(row["final_loss"])
            rows.append(row)
            print(
                f"[train] amp {amp:4s} {method:6s}: {row['img_per_s']:9.1f} img/s ({row['ms_per_step']:.2f} ms/step),"
                f" loss {row['final_loss']:.4f}"
            )
        ce, rescom = rows[-2]["img_per_s"], rows[-1]["img_per_s"]
        print(f"[train] amp {amp:4s} ResCom step costs {100 * (ce / rescom - 1):+.1f} % over CE")
    result = {"device": str(device), "channels_last": args.channels_last, "batch": args.batch, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if not ok:
        print("[train] FAIL: a loss is not finite", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
