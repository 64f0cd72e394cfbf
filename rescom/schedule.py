"""Learning-rate schedules as epoch -> multiplier functions (for ``torch.optim.lr_scheduler.LambdaLR``).

ResCom's CIFAR recipe is linear warm-up for ``warmup_epochs`` followed by a step decay (×γ at each
milestone); its large-scale recipe is warm-up followed by cosine decay to ``lr · min_lr_ratio``. The official
script computed the CIFAR schedule and never applied it; here it is applied.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence

__all__ = ["lr_multiplier"]


def lr_multiplier(
    schedule: str,
    epochs: int,
    warmup_epochs: int = 0,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    min_lr_ratio: float = 1e-5,
) -> Callable[[int], float]:
    """Return ``f(epoch) -> multiplier`` for 0-based epochs.

    Warm-up is linear: epoch ``e < warmup_epochs`` uses ``(e + 1) / warmup_epochs``. Milestones are 1-based
    epoch numbers as in the recipes: milestone ``320`` decays the rate from the 320th epoch (0-based 319) on.
    """
    if schedule not in ("step", "cosine", "constant"):
        raise ValueError(f"schedule must be step, cosine or constant, got {schedule!r}")
    marks = sorted(int(m) - 1 for m in milestones)

    def multiplier(epoch: int) -> float:
        if warmup_epochs > 0 and epoch < warmup_epochs:
            return (epoch + 1) / warmup_epochs
        if schedule == "step":
            return gamma ** bisect.bisect_right(marks, epoch)
        if schedule == "cosine":
            span = max(1, epochs - warmup_epochs - 1)
            progress = min(1.0, (epoch - warmup_epochs) / span)
            return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return multiplier
