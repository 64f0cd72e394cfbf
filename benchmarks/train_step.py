"""ResCom's extra cost per training step: one ResCom step vs a plain two-view CE step, same backbone and batch.

    python benchmarks/train_step.py [--arch resnet32] [--classes 100] [--batch 128] [--device cpu]
                                    [--pairs 5] [--steps 8] [--threads N] [--name train_step]

Both steps run forward (2b images), loss, backward and an SGD update; the ResCom step adds the Siamese
Balanced Softmax, the class-balanced queue, hard pair mining and the class-balanced contrastive loss
(CIFAR-100-LT recipe: K=10, Qp=1, Qn=400, τ=0.2, λ=0.5). One *pair* is ``--steps`` rounds of one CE step
and one ResCom step, alternating (which goes first alternates between pairs), so a change in machine load hits
both alike; a pair's figures are the medians of its steps. The script prints every pair and the median over
the pairs of the ResCom/CE ratio, in milliseconds per step (and images/s, both views counted), as wall time
and as this process's CPU time (``time.process_time``; on a shared machine with one thread the CPU time
is the work done, unaffected by waiting for a core). It writes ``benchmarks/results/<name>.json`` and
``.md`` with the machine, the load average and the command.
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

from rescom.losses import create_loss
from rescom.models import create_model
from rescom_dev.machine import describe_machine
from rescom_dev.results import write_result


def synthetic_problem(
    method: str, args: argparse.Namespace, device: torch.device
) -> tuple[torch.nn.Module, torch.nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    """The benchmark's seeded problem for one method: model, criterion, optimiser, images, labels.

    CIFAR-shaped random data (``args.classes``, ``args.arch``, ``args.batch`` images per view of ``args.size``
    pixels) with a long-tailed ``π`` for the loss (500 -> 5 images per class); K = 10, Qp = 1,
    Qn = min(400, K·(C-1)), τ = 0.2, λ = 0.5. Also used by ``scripts/gpu_train_check.py``.
    """
    torch.manual_seed(0)
    counts = [max(5, int(500 * (0.01 ** (i / (args.classes - 1))))) for i in range(args.classes)]
    model = create_model(args.arch, num_classes=args.classes, proj_dim=32).to(device)
    criterion = create_loss(
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
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(2 * args.batch, 3, args.size, args.size, device=device)  # [2b, 3, H, W]
    labels = torch.randint(0, args.classes, (args.batch,), device=device).repeat(2)  # [2b]
    return model, criterion, optimizer, images, labels


class Stepper:
    """A model, a criterion and an optimiser for one method, timed ``steps`` at a time."""

    def __init__(self, method: str, args: argparse.Namespace, device: torch.device) -> None:
        self.device = device
        self.model, self.criterion, self.optimizer, self.images, self.labels = synthetic_problem(
            method, args, device
        )

    def step(self) -> tuple[float, float]:
        """One timed step: (wall seconds, CPU seconds of this process)."""
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        loss = self.criterion(self.model(self.images), self.labels)["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        sync()
        return time.perf_counter() - t0, time.process_time() - c0


def run_pair(steppers: dict[str, Stepper], steps: int, first: str) -> dict[str, float]:
    """``steps`` rounds of one step of each method, alternating, so load changes hit both alike.

    Returns the median wall and CPU milliseconds per step of each method and their ratios.
    """
    order = (first, "rescom" if first == "ce" else "ce")
    wall: dict[str, list[float]] = {m: [] for m in order}
    cpu: dict[str, list[float]] = {m: [] for m in order}
    for _ in range(steps):
        for method in order:
            w, c = steppers[method].step()
            wall[method].append(1e3 * w)
            cpu[method].append(1e3 * c)
    out = {f"{m}_ms": statistics.median(wall[m]) for m in order}
    out.update({f"{m}_cpu_ms": statistics.median(cpu[m]) for m in order})
    out["ratio"] = out["rescom_ms"] / out["ce_ms"]
    out["cpu_ratio"] = out["rescom_cpu_ms"] / out["ce_cpu_ms"]
    return out


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
    machine = describe_machine()
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
            stepper.step()  # untimed
    pairs = []
    for i in range(args.pairs):
        pair = run_pair(steppers, args.steps, "ce" if i % 2 == 0 else "rescom")
        pairs.append(pair)
        print(
            f"pair {i + 1}: CE {pair['ce_ms']:7.1f} ms/step  ResCom {pair['rescom_ms']:7.1f} ms/step  "
            f"ratio {pair['ratio']:.3f} (CPU time: {pair['ce_cpu_ms']:.1f} / {pair['rescom_cpu_ms']:.1f} ms, "
            f"ratio {pair['cpu_ratio']:.3f})",
            flush=True,
        )
    med = {key: statistics.median(p[key] for p in pairs) for key in pairs[0]}
    images = 2 * args.batch
    lines = [
        "| | median wall ms/step | images/s | median CPU ms/step |",
        "|---|---|---|---|",
        f"| two-view CE | {med['ce_ms']:.1f} | {images / med['ce_ms'] * 1e3:.0f} | {med['ce_cpu_ms']:.1f} |",
        f"| ResCom | {med['rescom_ms']:.1f} | {images / med['rescom_ms'] * 1e3:.0f} | {med['rescom_cpu_ms']:.1f} |",
        "",
        f"ResCom / CE, median of {args.pairs} paired ratios: **{med['ratio']:.3f}x** wall time, "
        f"{med['cpu_ratio']:.3f}x CPU time of this process (target <= 1.05x).",
        f"Setup: {setup}.",
    ]
    print("\n".join(lines))
    write_result(
        args.name,
        {
            "setup": setup,
            "threads": torch.get_num_threads(),
            "pairs": pairs,
            **med,
            "images_per_step": images,
        },
        "\n".join(lines),
        machine,
    )


if __name__ == "__main__":
    main()
