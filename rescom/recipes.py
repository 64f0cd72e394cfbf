"""Recipes for a user's own long-tailed data: ResCom hyper-parameters from the class counts (torch-free).

The paper's recipes (Zhong et al., arXiv 2203.11506) are tuned for CIFAR-LT / ImageNet-LT. On a user's
``imagefolder`` the same numbers can be impossible (a queue of K keys per class when the rarest class has 2
images) or wasteful. :func:`recommend` derives them from ``n_c`` (training images per class):

- ``K`` (``loss.queue_size``, keys kept per class): at most the rarest class's count ``min n_c`` (a class
  cannot fill more slots than it has images), at most 10, at least 1.
- ``Qp`` (``loss.num_positives``): 1 (the paper's choice), never more than ``K``.
- ``Qn`` (``loss.num_negatives``, hard negatives mined per query): ``min(K · (C − 1), 40 · K)``; ``K · (C − 1)``
  is every key of the other classes.
- ``batch`` (``optim.batch_size``): a power of two near ``N / 8`` (at least 8 steps per epoch), in 16..128.
- ``epochs`` (``optim.epochs``): enough optimisation steps for the contrastive queue and embedding to become
  useful, ``max(30, ceil(1500 / steps_per_epoch))`` capped at 400, and
- ``con_warmup_epochs``: 0. A linear ramp of λ from 0 (:func:`contrastive_weight`, ``loss.con_warmup_epochs``)
  was the hypothesis for ResCom's short-budget deficit; on digits-LT IF 100 at 20 epochs (3 seeds) it moved the
  mean by +1.2 top-1 but was worse in 2 of 3 seeds (docs/evaluation.md), so it stays an ablation axis, off by
  default.

:func:`check` returns the warnings a run should print (K above the rarest class, Qn above K·(C−1), Qp above
K). ``python -m rescom.recipes DATA_DIR`` prints the recommended overrides for ``training/train.py``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["Recipe", "recommend", "check", "contrastive_weight", "overrides", "main"]


@dataclass(frozen=True)
class Recipe:
    """Recommended ResCom hyper-parameters for one training split.

    Attributes:
        queue_size: K. num_positives: Qp. num_negatives: Qn. batch_size: images per view per step.
        epochs: training epochs. con_warmup_epochs: epochs over which λ ramps from 0 to its value.
    """

    queue_size: int
    num_positives: int
    num_negatives: int
    batch_size: int
    epochs: int
    con_warmup_epochs: int


def recommend(class_counts: Sequence[int]) -> Recipe:
    """K, Qp, Qn, batch size, epochs and λ warm-up from the training counts ``n_c`` (see the module docstring).

    Raises:
        ValueError: fewer than 2 classes, or a class without images.
    """
    counts = [int(n) for n in class_counts]
    if len(counts) < 2 or min(counts) < 1:
        raise ValueError(f"need >= 2 classes with >= 1 training image each, got counts {counts[:20]}")
    c, total = len(counts), sum(counts)
    k = max(1, min(10, min(counts)))
    batch = int(min(128, max(16, 2 ** round(math.log2(max(total / 8, 1))))))
    steps = max(1, total // batch)
    epochs = int(min(400, max(30, math.ceil(1500 / steps))))
    return Recipe(
        queue_size=k,
        num_positives=1,
        num_negatives=min(k * (c - 1), 40 * k),
        batch_size=batch,
        epochs=epochs,
        con_warmup_epochs=0,
    )


def check(config: Mapping[str, Any], class_counts: Sequence[int]) -> list[str]:
    """One-line warnings about a ResCom config for these counts (empty when all is well)."""
    if config.get("method", "rescom") != "rescom":
        return []
    loss = config["loss"]
    k, qp, qn = int(loss["queue_size"]), int(loss["num_positives"]), int(loss["num_negatives"])
    c, rarest = len(class_counts), int(min(class_counts))
    out = []
    if k > rarest:
        out.append(
            f"loss.queue_size K={k} exceeds the rarest class's {rarest} training images: its queue slots "
            f"repeat the same few keys; use K <= {rarest}"
        )
    if qn > k * (c - 1):
        out.append(
            f"loss.num_negatives Qn={qn} exceeds K*(C-1) = {k * (c - 1)} keys of other classes; lower Qn"
        )
    if qp > k:
        out.append(f"loss.num_positives Qp={qp} exceeds K={k} keys per class; use Qp <= K")
    return out


def contrastive_weight(con_weight: float, epoch: int, warmup_epochs: int) -> float:
    """λ for ``epoch`` (0-based): ``λ · min(1, (epoch + 1) / (warmup + 1))``; ``warmup = 0`` is λ throughout."""
    if warmup_epochs <= 0:
        return float(con_weight)
    return float(con_weight) * min(1.0, (epoch + 1) / (warmup_epochs + 1))


def overrides(recipe: Recipe) -> list[str]:
    """``key=value`` overrides of ``training/train.py`` for ``recipe``."""
    r = asdict(recipe)
    keys = {
        "queue_size": "loss.queue_size",
        "num_positives": "loss.num_positives",
        "num_negatives": "loss.num_negatives",
        "con_warmup_epochs": "loss.con_warmup_epochs",
        "batch_size": "optim.batch_size",
        "epochs": "optim.epochs",
    }
    return [f"{key}={r[name]}" for name, key in keys.items()]


def _folder_counts(train_dir: Path) -> tuple[list[str], list[int]]:
    from rescom.data.folder import IMG_EXTENSIONS

    names, counts = [], []
    for folder in sorted(p for p in train_dir.iterdir() if p.is_dir()):
        names.append(folder.name)
        counts.append(sum(1 for p in folder.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS))
    return names, counts


def main(argv: list[str] | None = None) -> int:
    """``python -m rescom.recipes DATA_DIR``: print the recipe for ``DATA_DIR/train/<class>/*``."""
    p = argparse.ArgumentParser(description="Recommend ResCom hyper-parameters for an imagefolder dataset.")
    p.add_argument("data", help="imagefolder root with train/<class>/*")
    args = p.parse_args(argv)
    train = Path(args.data) / "train"
    if not train.is_dir():
        print(f"error: {train} is not a folder (expected DATA/train/<class>/<image>)", file=sys.stderr)
        return 2
    names, counts = _folder_counts(train)
    try:
        recipe = recommend(counts)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(names)} classes, {sum(counts)} training images, {max(counts)}..{min(counts)} per class")
    print(
        "python training/train.py --config training/configs/imagefolder_small.yaml --data-dir",
        args.data,
        end=" ",
    )
    print(" ".join(overrides(recipe)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
