"""Class statistics and class-aware samplers for long-tailed training sets."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["class_counts", "ClassBalancedSampler"]


def class_counts(targets: Sequence[int] | np.ndarray, num_classes: int) -> list[int]:
    """Number of samples per class.

    Args:
        targets: integer labels in ``0..C-1``.
        num_classes: C.

    Returns:
        ``[C]`` list of ints (classes without samples count 0).

    Raises:
        ValueError: a label is outside ``0..C-1``.
    """
    labels = np.asarray(targets, dtype=np.int64).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must be in 0..{num_classes - 1} (C={num_classes}), found {labels.min()}..{labels.max()}"
        )
    return [int(c) for c in np.bincount(labels, minlength=num_classes)]


class ClassBalancedSampler(Sampler[int]):
    """Sample a class uniformly, then an image of that class uniformly (with replacement).

    Not used by the ResCom recipes (ResCom samples instance-balanced and rebalances in the loss); provided for
    re-sampling baselines. ``set_epoch`` reseeds, as for ``DistributedSampler``.

    Args:
        targets: labels ``[N]``.
        num_samples: indices per epoch (default N).
        seed: base seed; the epoch is added to it.
    """

    def __init__(self, targets: Sequence[int], num_samples: int | None = None, seed: int = 0) -> None:
        labels = np.asarray(targets, dtype=np.int64)
        if labels.size == 0:
            raise ValueError("ClassBalancedSampler needs at least one target")
        self.per_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        self.num_samples = len(labels) if num_samples is None else int(num_samples)
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        """Reseed the draw for ``epoch`` (``seed + epoch``), so every epoch samples a different sequence."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        classes = torch.randint(len(self.per_class), (self.num_samples,), generator=g).tolist()
        picks = torch.rand(self.num_samples, generator=g).tolist()
        for c, u in zip(classes, picks, strict=True):
            idx = self.per_class[c]
            yield int(idx[min(int(u * len(idx)), len(idx) - 1)])
