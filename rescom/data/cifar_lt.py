"""CIFAR-10-LT / CIFAR-100-LT (Cao et al. 2019) from the CIFAR "python version" pickles.

``data_dir`` is the folder holding ``cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``,
``batches.meta``) or ``cifar-100-python/`` (``train``, ``test``, ``meta``), or that folder itself.
``download=True`` fetches it with torchvision first (never done by the tests).

Splits:

* **train**: class c keeps ``n_c = floor(n_max * IF^(-c/(C-1)))`` images (n_max = images of class 0, i.e.
  5000 / 500), chosen exactly like the LDAM-DRW/ResCom code: per class, in class order, the indices are
  shuffled by one ``np.random.RandomState(seed)`` (seed 0 = their ``np.random.seed(0)``) and the first
  ``n_c`` are kept. With ``val_per_class=0`` the training set is the standard benchmark one.
* **val** (balanced): the next ``val_per_class`` shuffled, UNUSED training images of every class (default
  50 for CIFAR-10, 20 for CIFAR-100). The head classes use all their images, so their training count is
  capped at ``available - val_per_class``. With the defaults this changes class 0 only (CIFAR-100:
  500 -> 480; CIFAR-10: 5000 -> 4950), plus class 1 of CIFAR-100-LT IF10 (488 -> 480): totals 10,827 /
  12,588 / 19,545 (CIFAR-100-LT IF100/50/10) and 12,356 / 13,946 / 20,381 (CIFAR-10-LT) instead of the
  benchmark's 10,847 / 12,608 / 19,573 and 12,406 / 13,996 / 20,431. ``class_counts`` always records the
  counts actually used.
* **test**: the full balanced test set (10,000 images).
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np

from rescom.data.base import (
    ArrayImageDataset,
    DatasetSplits,
    check_positive_int,
    longtail_counts,
    subsample_longtail,
)
from rescom.data.samplers import class_counts

__all__ = ["build_cifar_lt", "load_cifar", "CIFAR_MEAN", "CIFAR_STD"]

log = logging.getLogger(__name__)

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

_LAYOUT = {
    10: {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "labels": b"labels",
        "names": b"label_names",
    },
    100: {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "labels": b"fine_labels",
        "names": b"fine_label_names",
    },
}


def _find_folder(data_dir: str | Path | None, num_classes: int) -> Path:
    layout = _LAYOUT[num_classes]
    if data_dir is None:
        raise FileNotFoundError(
            f"CIFAR-{num_classes} needs data_dir: the folder holding {layout['folder']}/ (python version pickles)"
        )
    root = Path(data_dir)
    for candidate in (root / layout["folder"], root):
        if all((candidate / f).is_file() for f in layout["train"] + layout["test"]):
            return candidate
    raise FileNotFoundError(
        f"CIFAR-{num_classes} not found under {root}: expected {layout['folder']}/ with files "
        f"{', '.join(layout['train'] + layout['test'])} (pass download=True to fetch it with torchvision)"
    )


def _read_batches(folder: Path, files: list[str], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in files:
        with open(folder / name, "rb") as fh:
            entry = pickle.load(fh, encoding="bytes")
        data = np.asarray(entry[b"data"], dtype=np.uint8)  # [n, 3072], channel-major rows
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{folder / name}: b'data' must be [n, 3072] uint8, got {data.shape}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # [n, 32, 32, 3]
        labels.append(np.asarray(entry[label_key], dtype=np.int64))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def load_cifar(data_dir: str | Path | None, num_classes: int, download: bool = False):
    """Read CIFAR-10/100 into memory.

    Returns:
        ``(train_images [50000, 32, 32, 3] uint8, train_labels [50000], test_images, test_labels, class_names)``;
        class names come from the meta file, or are ``class_<i>`` if it is missing.
    """
    if num_classes not in _LAYOUT:
        raise ValueError(f"num_classes must be 10 or 100 for CIFAR, got {num_classes}")
    if download:
        if data_dir is None:
            raise ValueError("download=True needs data_dir (where to put the CIFAR files)")
        import torchvision

        cls = torchvision.datasets.CIFAR10 if num_classes == 10 else torchvision.datasets.CIFAR100
        cls(root=str(data_dir), train=True, download=True)
    layout = _LAYOUT[num_classes]
    folder = _find_folder(data_dir, num_classes)
    x_train, y_train = _read_batches(folder, layout["train"], layout["labels"])
    x_test, y_test = _read_batches(folder, layout["test"], layout["labels"])
    names = [f"class_{i}" for i in range(num_classes)]
    meta_path = folder / layout["meta"]
    if meta_path.is_file():
        with open(meta_path, "rb") as fh:
            meta = pickle.load(fh, encoding="bytes")
        raw = meta.get(layout["names"], [])
        if len(raw) == num_classes:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw]
    for split, y in (("train", y_train), ("test", y_test)):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"CIFAR-{num_classes} {split} labels must be in 0..{num_classes - 1}")
    return x_train, y_train, x_test, y_test, names


def build_cifar_lt(
    data_dir: str | Path | None,
    num_classes: int = 100,
    imbalance_factor: float = 100,
    val_per_class: int | None = None,
    n_max: int | None = None,
    seed: int = 0,
    download: bool = False,
) -> DatasetSplits:
    """Build CIFAR-{10,100}-LT (see the module docstring).

    Args:
        data_dir: folder holding ``cifar-10-batches-py/`` or ``cifar-100-python/``.
        num_classes: C, 10 or 100.
        imbalance_factor: IF (the benchmarks use 100, 50, 10).
        val_per_class: balanced validation images per class from the unused training images
            (default 50 for C=10, 20 for C=100; 0 = no val split, exact benchmark training set).
        n_max: head-class size before capping (default: the training images of class 0, 5000 / 500).
        seed: seed of the per-class shuffle (0 reproduces the LDAM-DRW/ResCom subset).
        download: fetch the dataset with torchvision first.

    Returns:
        :class:`DatasetSplits` with CIFAR mean/std, resize = crop = 32 and preset ``"cifar"``.
    """
    x_train, y_train, x_test, y_test, names = load_cifar(data_dir, num_classes, download=download)
    available = class_counts(y_train, num_classes)
    if val_per_class is None:
        val_per_class = 50 if num_classes == 10 else 20
    val_per_class = check_positive_int("val_per_class", val_per_class, 0)
    n_max = available[0] if n_max is None else check_positive_int("n_max", n_max, 1)
    formula = longtail_counts(n_max, num_classes, imbalance_factor)
    counts = [min(n, a - val_per_class) for n, a in zip(formula, available, strict=True)]
    if min(counts) < 1:
        bad = [c for c in range(num_classes) if counts[c] < 1]
        raise ValueError(
            f"classes {bad[:5]} have too few training images for val_per_class={val_per_class}; lower it"
        )
    capped = [c for c in range(num_classes) if counts[c] < formula[c]]
    if capped:
        log.info(
            "CIFAR-%d-LT: classes %s capped to keep %d unused images each for validation (counts %s -> %s)",
            num_classes,
            capped,
            val_per_class,
            [formula[c] for c in capped],
            [counts[c] for c in capped],
        )
    rng = np.random.RandomState(int(seed))
    train_idx, rest = subsample_longtail(y_train, num_classes, counts, rng)
    val_idx = np.concatenate([r[:val_per_class] for r in rest]).astype(np.int64) if val_per_class else None
    train = ArrayImageDataset(x_train[train_idx], y_train[train_idx].tolist(), indices=train_idx)
    val = None
    if val_idx is not None:
        val = ArrayImageDataset(x_train[val_idx], y_train[val_idx].tolist(), indices=val_idx.tolist())
    return DatasetSplits(
        train=train,
        val=val,
        test=ArrayImageDataset(x_test, y_test.tolist()),
        class_names=names,
        class_counts=class_counts(train.targets, num_classes),
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        resize=32,
        crop=32,
        default_preset="cifar",
        name=f"cifar{num_classes}_lt",
    )
