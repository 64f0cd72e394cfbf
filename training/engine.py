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

__all__ = [
    "EpochStats",
    "NonFiniteLossError",
    "RunningSums",
    "ShardSampler",
    "optimizer_step",
    "predict_logits",
    "train_one_epoch",
]


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
    """Means over one epoch (all ranks), plus throughput in images per second (both views counted).

    ``top1`` is the plain top-1 accuracy (percent) of the raw logits on the augmented training views.
    """

    loss: float
    loss_cls: float
    loss_con: float
    top1: float
    images_per_s: float
    seconds: float


def autocast_context(
    device: torch.device, amp_dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for mixed precision (training only), a no-op when ``amp_dtype`` is None."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


class RunningSums:
    """Per-epoch sums kept on the device (no host sync per step): loss, loss_cls, loss_con, correct.

    The number of samples is known on the host and kept there, so a step never copies a scalar to the device.
    """

    def __init__(self, device: torch.device) -> None:
        self.device_sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss, cls, con, correct
        self.count = 0

    @torch.no_grad()
    def add(self, losses: dict[str, torch.Tensor], logits: torch.Tensor, targets: torch.Tensor) -> None:
        n = targets.numel()
        correct = (logits.argmax(dim=1) == targets).sum()
        step = torch.stack(
            [
                losses["loss"].detach() * n,
                losses["loss_cls"].detach() * n,
                losses["loss_con"].detach() * n,
                correct,
            ]
        )  # [4]
        self.device_sums += step.double()
        self.count += n

    def means(self, reduce: bool = False) -> tuple[float, float, float, float]:
        """(loss, loss_cls, loss_con, top-1 %) so far; ``reduce`` sums over all ranks first (a collective)."""
        sums = torch.cat([self.device_sums, self.device_sums.new_tensor([self.count])])  # [5]
        if reduce:
            sums = dist.all_reduce_sum(sums)
        loss, cls, con, correct, count = sums.tolist()  # one host read
        count = max(count, 1.0)
        return loss / count, cls / count, con / count, 100.0 * correct / count


def optimizer_step(
    loss: torch.Tensor,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    grad_clip: float | None,
) -> None:
    """Backward and update; with a GradScaler (fp16) the loss is scaled and the gradients unscaled to clip."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        return
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)  # skipped when the scaled gradients hold inf/NaN
    scaler.update()


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
    progress_every: int = 5,
) -> EpochStats:
    """Run one epoch of two-view training.

    Each batch holds two augmented views of b images; they are stacked to ``[2b, 3, H, W]`` with labels
    ``[2b]`` (view 1 rows, then view 2 rows), so the Siamese Balanced Softmax sees both views and the
    contrastive loss pairs them. The loss is checked for NaN/Inf once per epoch on the device (no host sync
    per step); a non-finite epoch raises :class:`NonFiniteLossError` before anything is saved.

    Args:
        progress: Optional tqdm bar; every ``progress_every`` steps it advances and shows the running loss,
            top-1 and images/s of this epoch (one host read of the running sums each time).
    """
    model.train()
    criterion.train()
    sums = RunningSums(device)
    start = time.perf_counter()
    images_seen, pending = 0, 0
    for views, labels in loader:
        images = torch.cat([v.to(device, non_blocking=True) for v in views])  # [2b, 3, H, W]
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = labels.to(device, non_blocking=True).repeat(len(views))  # [2b]
        with autocast_context(device, amp_dtype):
            outputs = model(images)
        outputs = {k: v.float() for k, v in outputs.items()}
        losses = criterion(outputs, targets)
        optimizer_step(losses["loss"], model, optimizer, scaler, grad_clip)
        sums.add(losses, outputs["logits"], targets)
        images_seen += images.shape[0]
        pending += 1
        if progress is not None and pending >= progress_every:
            _show_progress(progress, pending, sums, images_seen, start)
            pending = 0
    if progress is not None and pending:
        _show_progress(progress, pending, sums, images_seen, start)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    loss, loss_cls, loss_con, top1 = sums.means(reduce=True)
    if not math.isfinite(loss) or not all(torch.isfinite(p).all() for p in model.parameters()):
        raise NonFiniteLossError(
            f"the loss became {loss} in epoch {epoch + 1}: training stopped; the last good checkpoint is "
            "kept. Lower optim.lr, set train.grad_clip, or use train.amp=bf16/none."
        )
    return EpochStats(
        loss=loss,
        loss_cls=loss_cls,
        loss_con=loss_con,
        top1=top1,
        images_per_s=images_seen * dist.get_world_size() / max(seconds, 1e-9),
        seconds=seconds,
    )


def _show_progress(progress: Any, steps: int, sums: RunningSums, images_seen: int, start: float) -> None:
    loss, _, _, top1 = sums.means()
    elapsed = max(time.perf_counter() - start, 1e-9)
    progress.set_postfix(
        loss=f"{loss:.3f}", top1=f"{top1:.1f}", img_s=f"{images_seen / elapsed:.0f}", refresh=False
    )
    progress.update(steps)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    dataset: Any,
    device: torch.device,
    *,
    num_classes: int,
    batch_size: int = 256,
    num_workers: int = 0,
    channels_last: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw float32 logits ``[N, C]`` and labels ``[N]`` of a whole dataset, sharded over ranks.

    Evaluation always runs in float32, without autocast, so validation/test metrics and the fitted
    temperature come from the logits the exported ONNX model serves. Every rank evaluates its shard (a rank
    may get none when the dataset has fewer samples than ranks: its part is ``[0, C]``, so the ragged
    all-gather still agrees on the shape); the shards are all-gathered with their indices and put back in
    dataset order, so every rank returns the same arrays.
    """
    model.eval()
    rank, world = dist.get_rank(), dist.get_world_size()
    sampler = ShardSampler(len(dataset), rank, world)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers)
    logits_parts = [torch.zeros(0, num_classes, device=device)]  # [0, C] even for an empty shard
    label_parts = [torch.zeros(0, dtype=torch.long, device=device)]
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        out = model(images)
        logits = out["logits"] if isinstance(out, dict) else out
        logits_parts.append(logits.float())  # [n, C]
        label_parts.append(labels.to(device=device, dtype=torch.long))
    logits = torch.cat(logits_parts)  # [n_rank, C]
    labels = torch.cat(label_parts)  # [n_rank]
    index = torch.as_tensor(sampler.indices, dtype=torch.long, device=device)
    if world > 1:
        logits = dist.concat_all_gather(logits)
        labels = dist.concat_all_gather(labels)
        index = dist.concat_all_gather(index)
    order = torch.argsort(index)
    return logits[order].cpu().numpy(), labels[order].cpu().numpy()
