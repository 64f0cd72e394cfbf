"""One training epoch and one evaluation pass; the trainer (train.py) only wires them together."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from rescom import distributed as dist

__all__ = ["NonFiniteLossError", "ShardSampler", "EpochStats", "train_one_epoch", "predict_logits"]


class NonFiniteLossError(RuntimeError):
    """The loss or the weights became NaN/Inf; the last good checkpoint is left untouched."""


class ShardSampler(Sampler[int]):
    """Deterministic evaluation shard: rank r takes indices r, r + W, r + 2W, ... (no padding, no duplicates)."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class EpochStats:
    """Means over one epoch (all ranks), plus throughput in images per second (both views counted)."""

    loss: float
    loss_cls: float
    loss_con: float
    acc: float
    images_per_s: float
    seconds: float


def autocast_context(
    device: torch.device, amp_dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for CUDA mixed precision, a no-op otherwise."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    device: torch.device,
    *,
    epoch: int,
    scaler: torch.amp.GradScaler | None = None,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    grad_clip: float | None = None,
    progress: Any = None,
) -> EpochStats:
    """Run one epoch of two-view training.

    Each batch holds two augmented views of b images; they are stacked to ``[2b, 3, H, W]`` with labels
    ``[2b]`` (view 1 rows, then view 2 rows), so the Siamese Balanced Softmax sees both views and the
    contrastive loss pairs them. The loss is checked for NaN/Inf once per epoch on the device (no host sync
    per step); a non-finite epoch raises :class:`NonFiniteLossError` before anything is saved.
    """
    model.train()
    criterion.train()
    sums = torch.zeros(5, device=device, dtype=torch.float64)  # loss, loss_cls, loss_con, correct, count
    start = time.perf_counter()
    images_seen = 0
    for step, (views, labels) in enumerate(loader):
        images = torch.cat([v.to(device, non_blocking=True) for v in views])  # [2b, 3, H, W]
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        targets = labels.repeat(len(views))  # [2b]
        with autocast_context(device, amp_dtype):
            outputs = model(images)
        outputs = {k: v.float() for k, v in outputs.items()}
        losses = criterion(outputs, targets)
        loss = losses["loss"]
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        with torch.no_grad():
            n = targets.numel()
            correct = (outputs["logits"].argmax(dim=1) == targets).sum()
            sums += torch.stack(
                [
                    loss.detach().double() * n,
                    losses["loss_cls"].detach().double() * n,
                    torch.as_tensor(losses["loss_con"], device=device).detach().double() * n,
                    correct.double(),
                    torch.tensor(float(n), device=device, dtype=torch.float64),
                ]
            )
        images_seen += images.shape[0]
        if progress is not None:
            progress.update(1)
            if step % 10 == 0:
                elapsed = max(time.perf_counter() - start, 1e-9)
                progress.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{images_seen / elapsed:.0f}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    sums = dist.all_reduce_sum(sums)
    total = max(float(sums[4]), 1.0)
    loss_mean = float(sums[0]) / total
    if not math.isfinite(loss_mean) or not all(torch.isfinite(p).all() for p in model.parameters()):
        raise NonFiniteLossError(
            f"the loss became {loss_mean} in epoch {epoch + 1}: training stopped; the last good checkpoint is "
            "kept. Lower optim.lr, set train.grad_clip, or use train.amp=bf16/none."
        )
    return EpochStats(
        loss=loss_mean,
        loss_cls=float(sums[1]) / total,
        loss_con=float(sums[2]) / total,
        acc=100.0 * float(sums[3]) / total,
        images_per_s=images_seen * dist.get_world_size() / max(seconds, 1e-9),
        seconds=seconds,
    )


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    dataset: Any,
    device: torch.device,
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw logits ``[N, C]`` (float32) and labels ``[N]`` of a whole dataset, sharded over ranks.

    Every rank evaluates its shard; the shards are all-gathered with their indices and put back in
    dataset order, so every rank returns the same arrays.
    """
    model.eval()
    rank, world = dist.get_rank(), dist.get_world_size()
    sampler = ShardSampler(len(dataset), rank, world)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers)
    logits_parts, label_parts = [], []
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, amp_dtype):
            out = model(images)
        logits = out["logits"] if isinstance(out, dict) else out
        logits_parts.append(logits.float())  # [n, C]
        label_parts.append(labels.to(device))
    num_classes = logits_parts[0].shape[1] if logits_parts else 0
    logits = torch.cat(logits_parts) if logits_parts else torch.zeros(0, num_classes, device=device)
    labels = torch.cat(label_parts) if label_parts else torch.zeros(0, dtype=torch.long, device=device)
    index = torch.as_tensor(sampler.indices, dtype=torch.long, device=device)
    if world > 1:
        logits = dist.concat_all_gather(logits)
        labels = dist.concat_all_gather(labels)
        index = dist.concat_all_gather(index)
    order = torch.argsort(index)
    return logits[order].cpu().numpy(), labels[order].cpu().numpy()
