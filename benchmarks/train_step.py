"""ResCom's extra cost per training step: one ResCom step vs a plain two-view CE step, same backbone and batch.

    python benchmarks/train_step.py [--arch resnet32] [--classes 100] [--batch 128] [--device cpu]
                                    [--pairs 5] [--steps 8] [--threads N] [--name train_step]

Both steps run forward (2b images), loss, backward and an SGD update; the ResCom step adds the Siamese
Balanced Softmax, the class-balanced queue, hard pair mining and the class-balanced contrastive loss
(CIFAR-100-LT recipe: K=10, Qp=1, Qn=400, τ=0.2, λ=0.5). One *pair* times ``--steps`` CE steps and
``--steps`` ResCom steps back to back (the order alternates between pairs), so a change in machine load hits
both alike. Each run's figure is its median step time; the script prints every pair and the median over the
pairs of the ResCom/CE ratio, all in milliseconds per step (and images/s, both views counted), and writes
``benchmarks/results/<name>.json`` and ``.md`` with the machine, the load average and the command.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.training_report import machine_now, write_result
from rescom.losses import create_loss
from rescom.models import create_model


class Stepper:
    """A model, a criterion and an optimiser for one method, timed ``steps`` at a time."""

    def __init__(self, method: str, args: argparse.Namespace, device: torch.device) -> None:
        torch.manual_seed(0)
        counts = [max(5, int(500 * (0.01 ** (i / (args.classes - 1))))) for i in range(args.classes)]
        self.device = device
        self.model = create_model(args.arch, num_classes=args.classes, proj_dim=32).to(device)
        self.criterion = create_loss(
            method,
            class_counts=counts,
            dim=32,
            queue_size=10,
            num_positives=1,
            num_negatives=min(400, 10 * (args.classes - 1)),
            temperature=0.2,
            con_weight=0.5,
            beta=0.999999,
        ).to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.images = torch.randn(2 * args.batch, 3, args.size, args.size, device=device)  # [2b, 3, H, W]
        self.labels = torch.randint(0, args.classes, (args.batch,), device=device).repeat(2)  # [2b]

    def step(self) -> float:
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        loss = self.criterion(self.model(self.images), self.labels)["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        sync()
        return time.perf_counter() - t0

    def median_ms(self, steps: int) -> float:
        return 1e3 * statistics.median(self.step() for _ in range(steps))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet32")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--batch", type=int, default=128, help="images per view")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--pairs", type=int, default=5, help="paired CE/ResCom runs (>= 5 for the headline)")
    p.add_argument("--steps", type=int, default=8, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per method before the first pair")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: as started)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--name", default="train_step", help="results file stem in benchmarks/results/")
    return p


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    machine = machine_now()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    setup = (
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, {args.arch}, "
        f"C={args.classes}, batch 2x{args.batch} at {args.size}px, {args.pairs} pairs x {args.steps} steps, "
        f"load average {machine['load_average_start']}"
    )
    print(setup, flush=True)
    steppers = {m: Stepper(m, args, device) for m in ("ce", "rescom")}
    for stepper in steppers.values():
        for _ in range(args.warmup):
            stepper.step()
    pairs = []
    for i in range(args.pairs):
        order = ("ce", "rescom") if i % 2 == 0 else ("rescom", "ce")
        ms = {m: steppers[m].median_ms(args.steps) for m in order}
        pairs.append({"ce_ms": ms["ce"], "rescom_ms": ms["rescom"], "ratio": ms["rescom"] / ms["ce"]})
        print(
            f"pair {i + 1}: CE {ms['ce']:7.1f} ms/step  ResCom {ms['rescom']:7.1f} ms/step  "
            f"ratio {ms['rescom'] / ms['ce']:.3f}",
            flush=True,
        )
    ce = statistics.median(p["ce_ms"] for p in pairs)
    rescom = statistics.median(p["rescom_ms"] for p in pairs)
    ratio = statistics.median(p["ratio"] for p in pairs)
    images = 2 * args.batch
    lines = [
        "| | median ms/step | images/s |",
        "|---|---|---|",
        f"| two-view CE | {ce:.1f} | {images / ce * 1e3:.0f} |",
        f"| ResCom | {rescom:.1f} | {images / rescom * 1e3:.0f} |",
        "",
        f"ResCom / CE, median of {args.pairs} paired ratios: **{ratio:.3f}x** (target <= 1.05x).",
        f"Setup: {setup}.",
    ]
    print("\n".join(lines))
    write_result(
        args.name,
        {
            "setup": setup,
            "threads": torch.get_num_threads(),
            "pairs": pairs,
            "ce_ms": ce,
            "rescom_ms": rescom,
            "ratio": ratio,
            "images_per_step": images,
        },
        lines,
        machine,
    )


if __name__ == "__main__":
    main()
