"""Long-tailed accuracy metrics (numpy only): top-1, balanced accuracy, per-class, Many / Medium / Few groups.

``top1`` is plain top-1 over the samples; ``balanced_acc`` is the mean of the per-class accuracies (classes
present in the labels). They coincide on a balanced test set and can differ by many points on an imbalanced
one, where ``top1`` mostly measures the head classes.

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
    """``top1``, ``balanced_acc`` and class-averaged ``many`` / ``medium`` / ``few`` accuracy, in percent.

    ``acc`` is kept as an alias of ``top1`` for readers of older ``metrics.json`` files. A group with no
    class (e.g. no Many-shot class in a small dataset) is reported as ``None``; so is every metric when
    ``labels`` is empty.
    """
    num_classes = len(class_counts)
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    per_class = per_class_accuracy(predictions, labels, num_classes)
    present = per_class[~np.isnan(per_class)]
    top1 = float(100.0 * np.mean(predictions == labels)) if len(labels) else None
    out: dict[str, float | None | list[float | None]] = {
        "top1": top1,
        "balanced_acc": float(present.mean()) if present.size else None,
        "acc": top1,
    }
    for name, mask in shot_groups(class_counts, many_threshold, few_threshold).items():
        values = per_class[mask & ~np.isnan(per_class)]
        out[name] = float(values.mean()) if values.size else None
    out["per_class_acc"] = [None if np.isnan(v) else float(v) for v in per_class]
    return out
