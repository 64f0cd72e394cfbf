"""Datasets: long-tailed splits (train / val / test) plus their class statistics and eval policy.

>>> splits = build_datasets("digits_lt", None)            # bundled with scikit-learn, no download
>>> splits = build_datasets("cifar100_lt", "data/cifar", imbalance_factor=100)
>>> splits.train[0]                                        # (PIL.Image RGB, label) until a transform is set

Every builder returns a :class:`DatasetSplits`; datasets expose ``targets`` and a settable ``transform``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rescom.data.base import ArrayImageDataset, DatasetSplits, FileImageDataset, longtail_counts
from rescom.data.cifar_lt import build_cifar_lt
from rescom.data.digits import build_digits_lt
from rescom.data.folder import build_image_folder
from rescom.data.samplers import ClassBalancedSampler, class_counts
from rescom.data.transforms import Cutout, EvalTransform, TwoViewTransform, create_transforms
from rescom.data.txt_list import ALIASES, build_txt_list

__all__ = [
    "build_datasets",
    "list_datasets",
    "DatasetSplits",
    "ArrayImageDataset",
    "FileImageDataset",
    "longtail_counts",
    "class_counts",
    "ClassBalancedSampler",
    "Cutout",
    "EvalTransform",
    "TwoViewTransform",
    "create_transforms",
]

_BUILDERS: dict[str, Callable[..., DatasetSplits]] = {
    "digits_lt": build_digits_lt,
    "cifar10_lt": functools.partial(build_cifar_lt, num_classes=10),
    "cifar100_lt": functools.partial(build_cifar_lt, num_classes=100),
    "imagefolder": build_image_folder,
    "txt_list": build_txt_list,
}
for _alias, _defaults in ALIASES.items():
    _BUILDERS[_alias] = functools.partial(build_txt_list, name=_alias, **_defaults)


# Options fixed by the dataset name (not overridable through kwargs).
_LOCKED: dict[str, set[str]] = {
    "cifar10_lt": {"num_classes"},
    "cifar100_lt": {"num_classes"},
    **{alias: {"name"} for alias in ALIASES},
}


def list_datasets() -> list[str]:
    """Names accepted by :func:`build_datasets`, sorted."""
    return sorted(_BUILDERS)


def build_datasets(name: str, data_dir: str | Path | None, **kwargs: Any) -> DatasetSplits:
    """Build the train/val/test splits of a dataset.

    Args:
        name: one of :func:`list_datasets`.
        data_dir: dataset root (ignored by ``digits_lt``).
        **kwargs: dataset options (e.g. ``imbalance_factor``, ``val_per_class``, ``seed``); ``None`` values are
            dropped so that config files can leave options unset.

    Returns:
        :class:`DatasetSplits`.

    Raises:
        ValueError: unknown name or unsupported option (the message lists what is allowed).
        FileNotFoundError: the data is not where ``data_dir`` says.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(list_datasets())}")
    builder = _BUILDERS[name]
    options = {k: v for k, v in kwargs.items() if v is not None}
    locked = _LOCKED.get(name, set())
    allowed = [p for p in inspect.signature(builder).parameters if p != "data_dir" and p not in locked]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"dataset {name!r} got unsupported option(s) {unknown}; allowed: {', '.join(allowed)}"
        )
    return builder(data_dir, **options)
