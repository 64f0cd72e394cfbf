"""``imagefolder``: ``root/{train,val,test}/<class>/<image>`` trees (class folders may nest images deeper).

* Class names are the sorted sub-folder names of ``root/train`` (label i = i-th name); every class must hold
  at least one image. ``val/`` and ``test/`` are optional and may omit classes, but may not add new ones.
  Without ``test/`` the ``val/`` images are used as the test split (a warning says so); without both, an error.
* ``imbalance_factor`` (optional) makes the training split long-tailed on top of what is on disk: classes are
  ranked by image count (descending, ties by label) and the class of rank r keeps
  ``min(count, floor(n_max * IF^(-r/(C-1))))`` images (n_max = the largest count), chosen by a per-class
  shuffle with ``np.random.RandomState(seed)``.
* Defaults: ImageNet mean/std, eval resize 256 / crop 224, preset ``"large_scale"`` (all overridable).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rescom.data.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetSplits,
    FileImageDataset,
    check_positive_int,
    longtail_counts,
)
from rescom.data.samplers import class_counts

__all__ = ["build_image_folder", "IMG_EXTENSIONS"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMG_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan(split_dir: Path, class_to_idx: dict[str, int]) -> tuple[list[Path], list[int]]:
    unknown = [c for c in _class_dirs(split_dir) if c not in class_to_idx]
    if unknown:
        raise ValueError(
            f"{split_dir} has class folder(s) {unknown[:5]} that are not in train/ "
            f"(allowed: the {len(class_to_idx)} train classes)"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for name, label in class_to_idx.items():
        if (split_dir / name).is_dir():
            found = _images_in(split_dir / name)
            paths.extend(found)
            labels.extend([label] * len(found))
    return paths, labels


def build_image_folder(
    data_dir: str | Path | None,
    imbalance_factor: float | None = None,
    seed: int = 0,
    resize: int = 256,
    crop: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    preset: str = "large_scale",
) -> DatasetSplits:
    """Build splits from an image-folder tree (see the module docstring).

    Args:
        data_dir: root holding ``train/`` and ``val/`` and/or ``test/``.
        imbalance_factor: optional IF >= 1 applied to the training split (None = keep everything).
        seed: seed of the subsampling shuffle.
        resize: eval resize of the shorter side, in pixels.
        crop: eval centre crop side, in pixels.
        mean: per-channel RGB normalisation mean (``[3]``, for inputs in [0, 1]).
        std: per-channel RGB normalisation standard deviation (``[3]``).
        preset: default augmentation preset recorded in the splits.

    Returns:
        :class:`DatasetSplits`.
    """
    if data_dir is None:
        raise FileNotFoundError(
            "imagefolder needs data_dir: a root with train/<class>/<image> (and val/ or test/)"
        )
    root = Path(data_dir)
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise FileNotFoundError(
            f"imagefolder: {train_dir} does not exist (expected root/train/<class>/<image>)"
        )
    names = _class_dirs(train_dir)
    if not names:
        raise ValueError(f"imagefolder: {train_dir} has no class folders")
    class_to_idx = {n: i for i, n in enumerate(names)}
    paths, labels = _scan(train_dir, class_to_idx)
    counts = class_counts(labels, len(names))
    empty = [names[c] for c in range(len(names)) if counts[c] == 0]
    if empty:
        raise ValueError(
            f"imagefolder: train class folder(s) {empty[:5]} hold no images ({', '.join(IMG_EXTENSIONS)})"
        )
    if imbalance_factor is not None:
        keep = _longtail_subset(labels, counts, float(imbalance_factor), int(seed))
        paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]

    splits: dict[str, FileImageDataset | None] = {}
    for split in ("val", "test"):
        split_dir = root / split
        splits[split] = FileImageDataset(*_scan(split_dir, class_to_idx)) if split_dir.is_dir() else None
    if splits["test"] is None:
        if splits["val"] is None:
            raise FileNotFoundError(
                f"imagefolder: {root} has neither val/ nor test/; at least one is required"
            )
        warnings.warn(
            f"imagefolder: {root}/test is missing; the val/ images are used as the test split", stacklevel=2
        )
        val = splits["val"]
        splits["test"] = FileImageDataset(val.paths, val.targets)
    train = FileImageDataset(paths, labels)
    return DatasetSplits(
        train=train,
        val=splits["val"],
        test=splits["test"],
        class_names=names,
        class_counts=class_counts(train.targets, len(names)),
        mean=tuple(mean),  # type: ignore[arg-type]
        std=tuple(std),  # type: ignore[arg-type]
        resize=check_positive_int("resize", resize, 1),
        crop=check_positive_int("crop", crop, 1),
        default_preset=preset,
        name="imagefolder",
    )


def _longtail_subset(labels: list[int], counts: list[int], imbalance_factor: float, seed: int) -> list[int]:
    """Indices kept when the rank-r class (by count, descending) is cut to ``floor(n_max * IF^(-r/(C-1)))``."""
    order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
    target = longtail_counts(max(counts), len(counts), imbalance_factor)
    rng = np.random.RandomState(seed)
    arr = np.asarray(labels)
    keep: list[int] = []
    for rank, c in enumerate(order):
        idx = np.flatnonzero(arr == c)
        rng.shuffle(idx)
        keep.extend(idx[: min(counts[c], target[rank])].tolist())
    return sorted(keep)
