"""Long-tailed accuracy metrics (numpy only): top-1, per-class, and Many / Medium / Few-shot groups.

The usual split (Liu et al. 2019; Kang et al. 2020): Many-shot classes have more than 100 training images,
Medium-shot 20–100 (inclusive), Few-shot fewer than 20. Accuracy is averaged per class inside each group.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["per_class_accuracy", "shot_groups", "longtail_metrics"]


def per_class_accuracy(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Accuracy of each class in percent (``NaN`` for a class absent from ``labels``), shape ``[C]``."""
    predictions = np.asarray(predictions, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    total = np.bincount(labels, minlength=num_classes).astype(np.float64)
    correct = np.bincount(labels[predictions == labels], minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100.0 * correct / total


def shot_groups(
    class_counts: Sequence[int], many_threshold: int = 100, few_threshold: int = 20
) -> dict[str, np.ndarray]:
    """Boolean masks ``[C]``: ``many`` (n > many_threshold), ``few`` (n < few_threshold), ``medium`` (else)."""
    if few_threshold > many_threshold:
        raise ValueError(f"few_threshold ({few_threshold}) must not exceed many_threshold ({many_threshold})")
    counts = np.asarray(class_counts)
    many = counts > many_threshold
    few = counts < few_threshold
    return {"many": many, "medium": ~many & ~few, "few": few}


def longtail_metrics(
    predictions: np.ndarray,
    labels: np.ndarray,
    class_counts: Sequence[int],
    many_threshold: int = 100,
    few_threshold: int = 20,
) -> dict[str, float | None | list[float | None]]:
    """Top-1 ``acc`` and class-averaged ``many`` / ``medium`` / ``few`` accuracy, in percent.

    A group with no class (e.g. no Many-shot class in a small dataset) is reported as ``None``.
    """
    num_classes = len(class_counts)
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    per_class = per_class_accuracy(predictions, labels, num_classes)
    out: dict[str, float | None | list[float | None]] = {
        "acc": float(100.0 * np.mean(predictions == labels)) if len(labels) else None,
    }
    for name, mask in shot_groups(class_counts, many_threshold, few_threshold).items():
        values = per_class[mask & ~np.isnan(per_class)]
        out[name] = float(values.mean()) if values.size else None
    out["per_class_acc"] = [None if np.isnan(v) else float(v) for v in per_class]
    return out
