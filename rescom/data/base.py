"""Dataset containers shared by all dataset builders, and the long-tailed (exponential) profile."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from rescom.preprocess import to_rgb

__all__ = [
    "DatasetSplits",
    "ArrayImageDataset",
    "FileImageDataset",
    "longtail_counts",
    "subsample_longtail",
    "check_positive_int",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def longtail_counts(n_max: int, num_classes: int, imbalance_factor: float) -> list[int]:
    """Exponential long-tailed profile ``n_i = floor(n_max * IF^(-i/(C-1)))``, i = 0..C-1 (Cao et al. 2019).

    Computed as ``int(n_max * (1/IF) ** (i/(C-1)))``, the expression of the LDAM-DRW/ResCom code, so the
    totals equal the published ones (CIFAR-100-LT IF100: 10,847 images; CIFAR-10-LT IF100: 12,406).

    Args:
        n_max: images of the head class (class 0).
        num_classes: C.
        imbalance_factor: IF = n_0 / n_{C-1}, >= 1 (1 = balanced).

    Returns:
        ``[C]`` non-increasing counts, each >= 1.
    """
    if num_classes < 1 or n_max < 1:
        raise ValueError(f"need num_classes (C) >= 1 and n_max >= 1, got C={num_classes}, n_max={n_max}")
    try:
        imbalance_factor = float(imbalance_factor)
    except (TypeError, ValueError):
        raise ValueError(f"imbalance_factor (IF) must be a number >= 1, got {imbalance_factor!r}")
    if not imbalance_factor >= 1:
        raise ValueError(f"imbalance_factor (IF) must be >= 1 (e.g. 100, 50, 10), got {imbalance_factor}")
    if num_classes == 1:
        return [int(n_max)]
    ratio = 1.0 / float(imbalance_factor)
    return [max(1, int(n_max * ratio ** (i / (num_classes - 1)))) for i in range(num_classes)]


@dataclass
class DatasetSplits:
    """Everything a training run needs to know about a dataset.

    Attributes:
        train: training dataset (long-tailed).
        val: validation dataset (model selection, temperature fit) or ``None``.
        test: test dataset (balanced for the standard benchmarks).
        class_names: ``[C]`` names.
        class_counts: ``[C]`` training images per class (the training prior pi).
        mean, std: per-channel normalisation (RGB, on [0, 1] pixels).
        resize, crop: eval policy for :func:`rescom.preprocess.resize_center_crop` (shorter side, square).
        default_preset: augmentation preset for :func:`rescom.data.transforms.create_transforms`
            (``"cifar"``, ``"large_scale"`` or ``"digits"``).
        name: dataset name as passed to :func:`rescom.data.build_datasets`.
    """

    train: Any
    val: Any | None
    test: Any
    class_names: list[str]
    class_counts: list[int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: int
    crop: int
    default_preset: str
    name: str = ""

    def __post_init__(self) -> None:
        if len(self.class_names) != len(self.class_counts):
            raise ValueError(f"{len(self.class_names)} class names but {len(self.class_counts)} class counts")
        if self.crop > self.resize:
            raise ValueError(f"crop ({self.crop}) must not exceed resize ({self.resize})")
        self.mean = tuple(float(m) for m in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(s) for s in self.std)  # type: ignore[assignment]
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean/std must be 3 values with std > 0, got {self.mean} / {self.std}")

    @property
    def num_classes(self) -> int:
        """C."""
        return len(self.class_names)


class _LabeledImages(Dataset):
    """Common part: ``targets`` list, optional ``transform`` applied to the PIL image."""

    def __init__(self, targets: Sequence[int], transform: Callable[[Image.Image], Any] | None = None) -> None:
        self.targets: list[int] = [int(t) for t in targets]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, index: int) -> Image.Image:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = self.load(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]


class ArrayImageDataset(_LabeledImages):
    """Images held in memory as uint8 ``[N, H, W, 3]``; items are ``(PIL RGB image or transform(img), label)``.

    Args:
        images: uint8 array ``[N, H, W, 3]``.
        targets: ``[N]`` labels.
        transform: callable applied to the PIL image.
        indices: optional ``[N]`` positions of the images in the source dataset (provenance; tests use it to
            prove that splits do not overlap).
    """

    def __init__(
        self,
        images: np.ndarray,
        targets: Sequence[int],
        transform: Callable | None = None,
        indices: Sequence[int] | None = None,
    ) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        super().__init__(targets, transform)
        self.images = images
        self.indices = None if indices is None else [int(i) for i in indices]

    def load(self, index: int) -> Image.Image:
        """Image ``index`` as a PIL RGB image (from the uint8 ``[H, W, 3]`` array)."""
        return Image.fromarray(self.images[index], mode="RGB")


class FileImageDataset(_LabeledImages):
    """Images read lazily from files (Pillow, converted to RGB with :func:`rescom.preprocess.to_rgb`).

    Args:
        paths: ``[N]`` image file paths.
        targets: ``[N]`` labels.
        transform: callable applied to the PIL image.
    """

    def __init__(
        self, paths: Sequence[str | Path], targets: Sequence[int], transform: Callable | None = None
    ) -> None:
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
        super().__init__(targets, transform)
        self.paths = [str(p) for p in paths]

    def load(self, index: int) -> Image.Image:
        """Image ``index`` read from its file, decoded and converted to RGB."""
        with Image.open(self.paths[index]) as img:
            img.load()
            return to_rgb(img)


def subsample_longtail(
    targets: Sequence[int], num_classes: int, counts: Sequence[int], rng: np.random.RandomState
) -> tuple[list[int], list[np.ndarray]]:
    """Pick ``counts[c]`` indices of every class c after a per-class shuffle (classes in order 0..C-1).

    Returns:
        ``(selected, rest)``: the selected indices (class order) and, per class, the shuffled unused ones.
    """
    labels = np.asarray(targets, dtype=np.int64)
    selected: list[int] = []
    rest: list[np.ndarray] = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        if counts[c] > len(idx):
            raise ValueError(f"class {c} needs {counts[c]} images but has only {len(idx)}")
        selected.extend(idx[: counts[c]].tolist())
        rest.append(idx[counts[c] :])
    return selected, rest


def check_positive_int(name: str, value: Any, minimum: int = 0) -> int:
    """``int(value)`` if it is an integer >= ``minimum``, else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer | float) or int(value) != value:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)
