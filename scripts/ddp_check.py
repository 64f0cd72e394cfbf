"""DDP check: a few ResCom training steps on every rank, then prove the ranks agree (run it under torchrun).

    python -m torch.distributed.run --standalone --nproc_per_node=2 scripts/ddp_check.py --device cpu
    python -m torch.distributed.run --standalone --nproc_per_node=2 scripts/ddp_check.py --device cuda --amp bf16

Each rank trains a ResNet-32 (CIFAR-shaped synthetic long-tailed data, ``DistributedSampler``, DDP) with the
ResCom loss for ``--steps`` steps. Afterwards rank 0 checks, and prints as one JSON line:

- ``queue_identical``: the class-balanced queue (keys ``[C, K, d]``, ``ptr``, ``filled``) is bit-identical on
  every rank, so the all-gather in the queue update ran;
- ``queue_filled_as_global``: each class has ``min(K, samples of that class seen by ALL ranks)`` filled slots (a
  queue fed only its own rank's samples would hold fewer);
- ``params_identical``: the model parameters agree on every rank (DDP's gradient all-reduce);
- the backend (NCCL with a GPU per rank, gloo otherwise), world size and images/s.

Exit status 1 when any check fails, 2 for a bad invocation (e.g. not under torchrun).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from rescom import distributed as dist
from rescom.losses import create_loss
from rescom.models import create_model
from training.engine import optimizer_step

AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--device", default="cpu", help="cpu, cuda or auto (each rank takes GPU LOCAL_RANK %% count)"
    )
    p.add_argument("--amp", choices=sorted(AMP), default="none", help="autocast dtype on CUDA")
    p.add_argument("--classes", type=int, default=10, help="C")
    p.add_argument("--queue-size", type=int, default=4, help="K keys per class")
    p.add_argument("--batch", type=int, default=16, help="images per rank and view")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--size", type=int, default=32, help="image side")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--json", default=None, help="also write the result (rank 0) to this file")
    return p.parse_args(argv)


def synthetic_data(classes: int, n: int, size: int) -> TensorDataset:
    """Seeded CIFAR-shaped images ``[n, 3, size, size]`` with long-tailed labels (imbalance factor 10)."""
    g = torch.Generator().manual_seed(0)
    weights = torch.tensor([0.1 ** (i / max(1, classes - 1)) for i in range(classes)])
    labels = torch.multinomial(weights, n, replacement=True, generator=g)  # [n]
    images = torch.randn(n, 3, size, size, generator=g)  # [n, 3, H, W]
    return TensorDataset(images, labels)


def train(args: argparse.Namespace, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    """DDP training steps; returns (bare model, criterion, stats)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    data = synthetic_data(args.classes, args.batch * world * args.steps, args.size)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=0, drop_last=True)
    loader = DataLoader(data, batch_size=args.batch, sampler=sampler, drop_last=True)
    counts = torch.bincount(data.tensors[1], minlength=args.classes).clamp(min=1).tolist()
    torch.manual_seed(0)  # identical initial weights on every rank (DDP also broadcasts them)
    model = create_model("resnet32", num_classes=args.classes, proj_dim=32).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = create_loss(
        "rescom",
        class_counts=counts,
        dim=32,
        queue_size=args.queue_size,
        num_positives=1,
        num_negatives=min(64, args.queue_size * (args.classes - 1)),
        temperature=0.2,
        con_weight=0.5,
        beta=0.999999,
    ).to(device)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type) if AMP[args.amp] == torch.float16 else None
    seen = []
    start, images = time.perf_counter(), 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        flip = torch.flip(x, dims=[3])  # the second Siamese view
        views = torch.cat([x, flip])  # [2b, 3, H, W]
        if args.channels_last:
            views = views.contiguous(memory_format=torch.channels_last)
        with torch.autocast(
            device.type, dtype=AMP[args.amp] or torch.float32, enabled=AMP[args.amp] is not None
        ):
            loss = criterion(ddp(views), torch.cat([y, y]))["loss"]
        optimizer_step(loss, ddp, optimizer, scaler, grad_clip=None)
        seen.append(y)
        images += 2 * x.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    labels_all = dist.concat_all_gather(torch.cat(seen), equal_sizes=True)  # [world * steps * b]
    stats = {"img_per_s": images * world / seconds, "labels": labels_all, "loss": float(loss.detach())}
    return model, criterion, stats


def identical_on_all_ranks(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is bit-identical on every rank (compared as bytes, so NaNs compare too)."""
    flat = tensor.detach().reshape(1, -1).contiguous()  # [1, m]
    gathered = dist.concat_all_gather(flat, equal_sizes=True).view(torch.uint8)  # [world, m * itemsize]
    return bool((gathered == gathered[:1]).all())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = dist.read_env()
    if env.world_size < 2:
        print(
            "ddp_check: run it under torchrun with --nproc_per_node >= 2 (WORLD_SIZE is 1)", file=sys.stderr
        )
        return 2
    dist.init_distributed(device=args.device)
    try:
        if args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available()):
            device = torch.device("cpu")
        else:
            device = torch.device("cuda", env.local_rank % torch.cuda.device_count())
            torch.cuda.set_device(device)
        model, criterion, stats = train(args, device)
        queue = criterion.queue
        queue_same = all(identical_on_all_ranks(b) for b in (queue.keys, queue.ptr, queue.filled))
        params_same = all(identical_on_all_ranks(p) for p in model.parameters())
        seen_per_class = torch.bincount(stats["labels"], minlength=args.classes)  # [C] over all ranks
        want_filled = seen_per_class.clamp(max=args.queue_size)
        filled_global = bool(torch.equal(queue.filled.sum(1), want_filled))
        result = {
            "backend": dist.get_backend(),
            "world_size": dist.get_world_size(),
            "device": str(device),
            "amp": args.amp,
            "steps": args.steps,
            "images_per_s": round(stats["img_per_s"], 1),
            "final_loss": round(stats["loss"], 4),
            "queue_identical": queue_same,
            "queue_filled_as_global": filled_global,
            "params_identical": params_same,
        }
        ok = queue_same and filled_global and params_same
        if dist.is_main():
            print("ddp_check " + json.dumps(result), flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        dist.barrier()
        return 0 if ok else 1
    finally:
        dist.destroy_distributed()


if __name__ == "__main__":
    sys.exit(main())
