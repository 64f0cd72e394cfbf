"""A dataset split as the served model sees it: uint8 ``[N, crop, crop, 3]`` images and ``[N]`` labels."""

from __future__ import annotations

from typing import Any

import numpy as np

from rescom.preprocess import resize_center_crop

__all__ = ["split_arrays"]


def split_arrays(splits: Any, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Decode ``splits.<split>`` with the serving preprocessing (:func:`rescom.preprocess.resize_center_crop`).

    Args:
        splits: a :class:`rescom.data.base.DatasetSplits`.
        split: ``"train"``, ``"val"`` or ``"test"``.
        limit: keep only the first ``limit`` samples.

    Returns:
        ``(images, labels)`` or ``None`` when the split does not exist or is empty.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    dataset = getattr(splits, split)
    if dataset is None or len(dataset) == 0:
        return None
    previous = getattr(dataset, "transform", None)
    dataset.transform = None
    try:
        n = len(dataset) if limit is None else min(limit, len(dataset))
        images = np.empty((n, splits.crop, splits.crop, 3), dtype=np.uint8)  # [N, H, W, 3]
        labels = np.empty(n, dtype=np.int64)  # [N]
        for i in range(n):
            img, label = dataset[i]
            images[i] = resize_center_crop(img, splits.resize, splits.crop)
            labels[i] = label
    finally:
        dataset.transform = previous
    return images, labels
