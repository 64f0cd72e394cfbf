"""digits-LT: scikit-learn's bundled 8x8 handwritten digits (no download), made long-tailed.

Construction (deterministic for a given ``seed``):

1. The 1,797 images (values 0..16) become uint8 ``round(v * 255 / 16)``, are upsampled to 32x32 with Pillow
   BILINEAR (mode ``L``) and converted to RGB (bright digit on a black background).
2. Per class c (classes in order 0..9), the image indices are shuffled with ``np.random.RandomState(seed)``;
   the first ``test_per_class`` form the balanced test split, the next ``val_per_class`` the balanced val split,
   and the remaining pool supplies the first ``n_c`` training images, with
   ``n_c = floor(n_max * IF^(-c/(C-1)))`` (C = 10; defaults n_max = 100, IF = 20: 100, 71, 51, ..., 5).
3. mean/std are computed from the training images (per channel, on [0, 1] pixels) and rounded to 4 decimals.

The smallest class has 174 images, so ``test_per_class + val_per_class + n_max`` must stay <= 174.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from rescom.data.base import ArrayImageDataset, DatasetSplits, check_positive_int, longtail_counts
from rescom.data.samplers import class_counts

__all__ = ["build_digits_lt", "load_digit_images"]

NUM_CLASSES = 10
IMAGE_SIZE = 32


@functools.lru_cache(maxsize=2)
def load_digit_images(size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as uint8 RGB ``[N, size, size, 3]`` and labels ``[N]`` (int64), read-only (cached)."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn; no download

    data = load_digits()
    raw = np.rint(data.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # [N, 8, 8]
    images = np.empty((len(raw), size, size, 3), dtype=np.uint8)
    for i, img in enumerate(raw):
        big = Image.fromarray(img, mode="L").resize((size, size), resample=Image.Resampling.BILINEAR)
        images[i] = np.asarray(big.convert("RGB"))
    targets = data.target.astype(np.int64)
    images.flags.writeable = False
    targets.flags.writeable = False
    return images, targets


def build_digits_lt(
    data_dir: str | None = None,
    imbalance_factor: float = 20,
    n_max: int = 100,
    test_per_class: int = 50,
    val_per_class: int = 20,
    seed: int = 0,
) -> DatasetSplits:
    """Build the digits-LT splits (see the module docstring).

    Args:
        data_dir: ignored (the data ships with scikit-learn); accepted for a uniform interface.
        imbalance_factor: IF >= 1, ratio of the largest to the smallest training class.
        n_max: training images of class 0.
        test_per_class: balanced test images per class (>= 1).
        val_per_class: balanced validation images per class (0 = no val split).
        seed: RNG seed of the per-class shuffle.

    Returns:
        :class:`DatasetSplits` with resize = crop = 32 and preset ``"digits"``.
    """
    del data_dir
    n_max = check_positive_int("n_max", n_max, 1)
    test_per_class = check_positive_int("test_per_class", test_per_class, 1)
    val_per_class = check_positive_int("val_per_class", val_per_class, 0)
    counts = longtail_counts(n_max, NUM_CLASSES, imbalance_factor)
    images, labels = load_digit_images()
    rng = np.random.RandomState(int(seed))
    train_idx: list[int] = []
    val_idx: list[int] = []
    test_idx: list[int] = []
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        need = test_per_class + val_per_class + counts[c]
        if need > len(idx):
            raise ValueError(
                f"digit class {c} has {len(idx)} images but test_per_class + val_per_class + n_{c} = "
                f"{test_per_class} + {val_per_class} + {counts[c]} = {need}; lower them (n_max <= "
                f"{len(idx) - test_per_class - val_per_class} with these test/val sizes)"
            )
        test_idx.extend(idx[:test_per_class].tolist())
        val_idx.extend(idx[test_per_class : test_per_class + val_per_class].tolist())
        train_idx.extend(idx[test_per_class + val_per_class : need].tolist())
    train_images = images[train_idx]
    pixels = train_images.reshape(-1, 3).astype(np.float64) / 255.0
    mean = tuple(round(float(m), 4) for m in pixels.mean(axis=0))
    std = tuple(round(float(s), 4) for s in pixels.std(axis=0))

    def subset(index: list[int]) -> ArrayImageDataset:
        return ArrayImageDataset(images[index], labels[index].tolist(), indices=index)

    train = ArrayImageDataset(train_images, labels[train_idx].tolist(), indices=train_idx)
    return DatasetSplits(
        train=train,
        val=subset(val_idx) if val_per_class else None,
        test=subset(test_idx),
        class_names=[str(c) for c in range(NUM_CLASSES)],
        class_counts=class_counts(train.targets, NUM_CLASSES),
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        resize=IMAGE_SIZE,
        crop=IMAGE_SIZE,
        default_preset="digits",
        name="digits_lt",
    )
