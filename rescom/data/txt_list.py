"""``txt_list`` datasets: list files of ``<relative/path> <label>`` lines, images under ``data_dir``.

Format (ImageNet-LT / iNaturalist 2018 / Places-LT lists of OLTR, BALMS, PaCo): one sample per line, the
label is the last whitespace-separated field (so paths may contain spaces), labels are 0..C-1; blank lines
and lines starting with ``#`` are skipped. Images are opened lazily (Pillow, converted to RGB).

List files are looked up as given when absolute, else under ``data_dir`` first, then relative to the working
directory. ``class_counts`` come from the train list. Class names: from ``names_file`` (one name per line,
line i = class i) if given, else the folder of each class's first train image (``train/n01440764/x.JPEG`` ->
``n01440764``) when those are unique, else ``class_<i>``.

Aliases set default list names (overridable):

==============  =====================================  ==========================================
name            lists                                  notes
==============  =====================================  ==========================================
``imagenet_lt`` ``ImageNet_LT_{train,val,test}.txt``   C = 1000, ImageNet mean/std
``inat2018``    ``iNaturalist18_{train,val}.txt``      C = 8142; the official val list is the TEST
                                                       split (no val split by default); iNat mean/std
``places_lt``   ``Places_LT_{train,val,test}.txt``     C = 365, ImageNet mean/std
==============  =====================================  ==========================================
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from rescom.data.base import IMAGENET_MEAN, IMAGENET_STD, DatasetSplits, FileImageDataset, check_positive_int
from rescom.data.samplers import class_counts

__all__ = ["build_txt_list", "read_list", "ALIASES", "INAT_MEAN", "INAT_STD"]

INAT_MEAN = (0.466, 0.471, 0.380)
INAT_STD = (0.195, 0.194, 0.192)

ALIASES: dict[str, dict[str, object]] = {
    "imagenet_lt": {
        "train_list": "ImageNet_LT_train.txt",
        "val_list": "ImageNet_LT_val.txt",
        "test_list": "ImageNet_LT_test.txt",
        "num_classes": 1000,
    },
    "inat2018": {
        "train_list": "iNaturalist18_train.txt",
        "val_list": "",
        "test_list": "iNaturalist18_val.txt",
        "num_classes": 8142,
        "mean": INAT_MEAN,
        "std": INAT_STD,
    },
    "places_lt": {
        "train_list": "Places_LT_train.txt",
        "val_list": "Places_LT_val.txt",
        "test_list": "Places_LT_test.txt",
        "num_classes": 365,
    },
}


def read_list(path: str | Path) -> tuple[list[str], list[int]]:
    """Parse a list file into relative paths and integer labels.

    Raises:
        ValueError: a line without a path and an integer label (the message names file and line).
    """
    paths: list[str] = []
    labels: list[int] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(None, 1)
            try:
                if len(parts) != 2:
                    raise ValueError
                label = int(parts[1])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: expected '<relative/path> <integer label>', got {line!r}")
            if label < 0:
                raise ValueError(f"{path}:{lineno}: labels must be >= 0, got {label}")
            paths.append(parts[0])
            labels.append(label)
    return paths, labels


def _resolve(path: str | Path, data_dir: Path | None, what: str) -> Path:
    p = Path(path)
    candidates = [p] if p.is_absolute() else ([data_dir / p] if data_dir is not None else []) + [p]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"{what} {str(path)!r} not found (looked at: {', '.join(str(c) for c in candidates)})"
    )


def _derive_names(paths: list[str], labels: list[int], num_classes: int) -> list[str]:
    first: dict[int, str] = {}
    for p, y in zip(paths, labels, strict=True):
        first.setdefault(y, p)
    names = [
        PurePosixPath(first[c].replace("\\", "/")).parent.name if c in first else ""
        for c in range(num_classes)
    ]
    if all(names) and len(set(names)) == num_classes:
        return names
    return [f"class_{i}" for i in range(num_classes)]


def build_txt_list(
    data_dir: str | Path | None,
    train_list: str | Path | None = None,
    val_list: str | Path | None = None,
    test_list: str | Path | None = None,
    names_file: str | Path | None = None,
    num_classes: int | None = None,
    resize: int = 256,
    crop: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    preset: str = "large_scale",
    name: str = "txt_list",
) -> DatasetSplits:
    """Build splits from list files (see the module docstring).

    Args:
        data_dir: image root joined with each list path.
        train_list: train list file (required).
        val_list: val list file; ``None``/``""`` = no val split.
        test_list: test list file; if missing, the val list is used as test (with a warning).
        names_file: optional class names, one per line.
        num_classes: C (default: largest label + 1 over all lists).
        resize: eval resize of the shorter side, in pixels.
        crop: eval centre crop side, in pixels.
        mean: per-channel RGB normalisation mean (``[3]``, for inputs in [0, 1]).
        std: per-channel RGB normalisation standard deviation (``[3]``).
        preset: default augmentation preset recorded in the splits.
        name: dataset name recorded in the splits.

    Returns:
        :class:`DatasetSplits` of lazily loaded :class:`FileImageDataset`.
    """
    root = Path(data_dir) if data_dir is not None else None
    if not train_list:
        raise ValueError(f"{name}: train_list is required (a file of '<relative/path> <label>' lines)")
    lists: dict[str, tuple[list[str], list[int]] | None] = {}
    for split, given in (("train", train_list), ("val", val_list), ("test", test_list)):
        lists[split] = read_list(_resolve(given, root, f"{name} {split}_list")) if given else None
    if lists["test"] is None:
        if lists["val"] is None:
            raise ValueError(f"{name}: need test_list or val_list for evaluation")
        warnings.warn(f"{name}: no test_list; the val list is used as the test split", stacklevel=2)
        lists["test"] = lists["val"]
    max_label = max(max(v[1], default=-1) for v in lists.values() if v is not None)
    if num_classes is None:
        num_classes = max_label + 1
    num_classes = check_positive_int("num_classes", num_classes, 1)
    if max_label >= num_classes:
        raise ValueError(
            f"{name}: label {max_label} found but num_classes (C) is {num_classes}; labels are 0..C-1"
        )
    train_paths, train_labels = lists["train"]  # type: ignore[misc]
    if names_file:
        with open(_resolve(names_file, root, f"{name} names_file"), encoding="utf-8") as fh:
            class_names = [ln.strip() for ln in fh if ln.strip()]
        if len(class_names) != num_classes:
            raise ValueError(f"{name}: names_file has {len(class_names)} names, expected C = {num_classes}")
    else:
        class_names = _derive_names(train_paths, train_labels, num_classes)

    def make(entry: tuple[list[str], list[int]] | None) -> FileImageDataset | None:
        if entry is None:
            return None
        base = root if root is not None else Path()
        return FileImageDataset([base / p for p in entry[0]], entry[1])

    train = make(lists["train"])
    return DatasetSplits(
        train=train,
        val=make(lists["val"]),
        test=make(lists["test"]),
        class_names=class_names,
        class_counts=class_counts(train_labels, num_classes),
        mean=tuple(mean),  # type: ignore[arg-type]
        std=tuple(std),  # type: ignore[arg-type]
        resize=check_positive_int("resize", resize, 1),
        crop=check_positive_int("crop", crop, 1),
        default_preset=preset,
        name=name,
    )
