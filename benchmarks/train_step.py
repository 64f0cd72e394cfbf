"""ResCom's extra cost per training step: one ResCom step vs a plain two-view CE step, same backbone and batch.

    python benchmarks/train_step.py [--arch resnet32] [--classes 100] [--batch 128] [--device cpu] [--steps 20]

Both steps run forward (2b images), loss, backward and an SGD update; the ResCom step adds the Siamese
Balanced Softmax, the class-balanced queue, hard pair mining and the class-balanced contrastive loss
(CIFAR-100-LT recipe: K=10, Qp=1, Qn=400, τ=0.2, λ=0.5). Prints the median step times and the overhead.
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


def time_steps(method: str, args: argparse.Namespace, device: torch.device) -> list[float]:
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
    times = []
    for step in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model(images)
        loss = criterion(out, labels)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet32")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--batch", type=int, default=128, help="images per view")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, {args.arch}, "
        f"C={args.classes}, batch 2x{args.batch} at {args.size}px, {args.steps} timed steps"
    )
    # Interleave the two methods twice so that drift in machine load affects both alike.
    results: dict[str, list[float]] = {"ce": [], "rescom": []}
    for _ in range(2):
        for method in ("ce", "rescom"):
            results[method] += time_steps(method, args, device)
    ce, rescom = statistics.median(results["ce"]), statistics.median(results["rescom"])
    print(f"two-view CE step:  {ce * 1e3:8.1f} ms (median)")
    print(f"ResCom step:       {rescom * 1e3:8.1f} ms (median)")
    print(f"ResCom overhead:   {100 * (rescom / ce - 1):+.1f} % (target <= 15 %)")


if __name__ == "__main__":
    main()
