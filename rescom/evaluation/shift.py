"""Label-shifted test sets: a labelled test set resampled to a forward / backward long-tailed or uniform prior.

The construction of LADE (Hong et al., CVPR 2021) and SADE (Zhang et al., NeurIPS 2022): for an imbalance
factor IF, class i (i = 0..C−1) keeps ``n_i = max(1, floor(n_max · IF^(−i/(C−1))))`` test images

- ``forward``: the training order, class 0 is the head (the test prior looks like ``π_train``);
- ``backward``: the order reversed, class C−1 is the head (the tail classes of training dominate);
- ``uniform``: ``n_max`` images of every class (IF is ignored).

``n_max`` defaults to the size of the smallest class in the test set, so every class is subsampled without
replacement (a balanced test set with 50 images per class and IF = 10 keeps 50, 38, ..., 5). Only a larger
``n_max`` draws a class with replacement, and the returned :class:`ShiftedSet` says so.

Pure numpy; the oracle prior of a resampled set is its realised class histogram (:attr:`ShiftedSet.prior`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "SHIFT_KINDS",
    "ShiftedSet",
    "shifted_prior",
    "shifted_counts",
    "resample_indices",
    "make_shifted_set",
]

SHIFT_KINDS = ("forward", "uniform", "backward")


@dataclass(frozen=True)
class ShiftedSet:
    """One resampled test set.

    Attributes:
        kind: ``"forward"``, ``"uniform"`` or ``"backward"``.
        imbalance_factor: IF (1.0 for ``uniform``).
        seed: RNG seed of the draw.
        indices: ``[M]`` indices into the original test set (class-sorted order is not kept: shuffled).
        counts: ``[C]`` images drawn per class.
        with_replacement: ``[C]`` True where a class needed more images than it has.
    """

    kind: str
    imbalance_factor: float
    seed: int
    indices: np.ndarray
    counts: np.ndarray
    with_replacement: np.ndarray

    @property
    def prior(self) -> np.ndarray:
        """The true (realised) label prior ``π_true = counts / M`` of this set, ``[C]``."""
        return self.counts / self.counts.sum()

    @property
    def name(self) -> str:
        """``"forward-10"``, ``"uniform"``, ``"backward-5"``: a stable key for tables."""
        return "uniform" if self.kind == "uniform" else f"{self.kind}-{self.imbalance_factor:g}"


def _check_kind(kind: str, imbalance_factor: float) -> None:
    if kind not in SHIFT_KINDS:
        raise ValueError(f"shift kind must be one of {', '.join(SHIFT_KINDS)}, got {kind!r}")
    if not np.isfinite(imbalance_factor) or imbalance_factor < 1:
        raise ValueError(
            f"imbalance factor IF must be a finite number >= 1 (e.g. 2, 5, 10), got {imbalance_factor}"
        )


def _profile(num_classes: int, kind: str, imbalance_factor: float) -> np.ndarray:
    """``IF^(−i/(C−1))`` in forward order, reversed for backward, ones for uniform; ``[C]``, max 1."""
    if kind == "uniform" or num_classes == 1:
        return np.ones(num_classes)
    ratio = (1.0 / float(imbalance_factor)) ** (np.arange(num_classes) / (num_classes - 1))  # [C]
    return ratio[::-1].copy() if kind == "backward" else ratio


def shifted_prior(num_classes: int, kind: str, imbalance_factor: float) -> np.ndarray:
    """The nominal (un-rounded) shifted prior ``π_i ∝ IF^(−i/(C−1))`` (reversed for backward), ``[C]``.

    Args:
        num_classes: C >= 1.
        kind: ``"forward"``, ``"uniform"`` or ``"backward"``.
        imbalance_factor: IF >= 1, ratio of the largest to the smallest class probability.

    Returns:
        float64 ``[C]`` summing to 1.
    """
    _check_kind(kind, imbalance_factor)
    if num_classes < 1:
        raise ValueError(f"num_classes (C) must be >= 1, got {num_classes}")
    weights = _profile(num_classes, kind, imbalance_factor)
    return weights / weights.sum()


def shifted_counts(
    available: Sequence[int] | np.ndarray, kind: str, imbalance_factor: float, n_max: int | None = None
) -> np.ndarray:
    """Images per class of a shifted set: ``n_i = max(1, floor(n_max · IF^(−i/(C−1))))`` (head = ``n_max``).

    Args:
        available: ``[C]`` test images per class; every class needs at least one.
        kind: ``"forward"``, ``"uniform"`` or ``"backward"``.
        imbalance_factor: IF >= 1.
        n_max: images of the head class; ``None`` = ``min(available)`` (no class is drawn with replacement).

    Returns:
        int64 ``[C]``.
    """
    _check_kind(kind, imbalance_factor)
    available = np.asarray(available, dtype=np.int64)
    if available.ndim != 1 or available.size == 0:
        raise ValueError(f"available must be a non-empty [C] list of counts, got shape {available.shape}")
    if available.min() < 1:
        empty = np.flatnonzero(available < 1).tolist()
        raise ValueError(
            f"every class needs at least one test image to resample; classes {empty[:10]} have none"
        )
    if n_max is None:
        n_max = int(available.min())
    if n_max < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max}")
    # A tiny epsilon keeps floor(50 · 0.1) at 5 rather than 4 when the power rounds just below.
    counts = np.floor(n_max * _profile(available.size, kind, imbalance_factor) + 1e-9).astype(np.int64)
    return np.maximum(counts, 1)


def resample_indices(
    labels: np.ndarray,
    counts: Sequence[int] | np.ndarray,
    rng: np.random.Generator,
    allow_replacement: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``counts[c]`` test indices of each class c, without replacement when the class has enough images.

    Args:
        labels: ``[N]`` integer labels of the test set.
        counts: ``[C]`` images wanted per class.
        rng: numpy Generator (seeded by the caller).
        allow_replacement: draw a class with replacement when it has fewer than ``counts[c]`` images; with
            ``False`` that raises instead.

    Returns:
        ``(indices [M], with_replacement [C] bool)``; ``indices`` is shuffled (no class order).
    """
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    if labels.ndim != 1:
        raise ValueError(f"labels must be [N], got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= counts.size):
        raise ValueError(f"labels must lie in 0..{counts.size - 1} (C = {counts.size} counts given)")
    order = np.argsort(labels, kind="stable")  # [N], grouped by class
    starts = np.searchsorted(labels[order], np.arange(counts.size + 1))  # [C + 1]
    picked: list[np.ndarray] = []
    replaced = np.zeros(counts.size, dtype=bool)
    for c, want in enumerate(counts.tolist()):
        pool = order[starts[c] : starts[c + 1]]
        if want == 0:
            continue
        if pool.size == 0:
            raise ValueError(f"class {c} has no test image but {want} were asked for")
        if want > pool.size:
            if not allow_replacement:
                raise ValueError(
                    f"class {c} has {pool.size} test images, {want} were asked for without replacement"
                )
            replaced[c] = True
        picked.append(rng.choice(pool, size=want, replace=bool(replaced[c])))
    indices = np.concatenate(picked) if picked else np.empty(0, dtype=np.int64)
    return rng.permutation(indices), replaced


def make_shifted_set(
    labels: np.ndarray,
    kind: str,
    imbalance_factor: float,
    seed: int,
    num_classes: int | None = None,
    n_max: int | None = None,
    allow_replacement: bool = True,
) -> ShiftedSet:
    """Resample a labelled test set to a forward / backward long-tailed or uniform prior (LADE / SADE style).

    Args:
        labels: ``[N]`` labels of the test set.
        kind: ``"forward"``, ``"uniform"`` or ``"backward"``.
        imbalance_factor: IF >= 1 (ignored for ``uniform``).
        seed: seeds ``np.random.default_rng``; the same seed gives the same set.
        num_classes: C (default ``labels.max() + 1``).
        n_max: head-class size (default: the smallest class of the test set, i.e. replacement-free).
        allow_replacement: see :func:`resample_indices`.

    Returns:
        :class:`ShiftedSet`.
    """
    labels = np.asarray(labels, dtype=np.int64)
    c = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    available = np.bincount(labels, minlength=c)  # [C]
    if kind == "uniform":
        imbalance_factor = 1.0
    counts = shifted_counts(available, kind, imbalance_factor, n_max)
    indices, replaced = resample_indices(labels, counts, np.random.default_rng(seed), allow_replacement)
    return ShiftedSet(kind, float(imbalance_factor), int(seed), indices, counts, replaced)
