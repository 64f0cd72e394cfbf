"""Augmentation presets, Cutout, the two-view wrapper and the export-identical eval transform.

Presets (``create_transforms(preset, train, resize, crop, mean, std)``):

* ``"cifar"`` train: RandomCrop(crop, padding=4) -> HFlip -> AutoAugment(CIFAR10 policy) -> ToTensor ->
  Cutout(1 hole, 16 px) -> Normalize (ResCom's CIFAR pipeline).
* ``"large_scale"`` train: RandomResizedCrop(crop, scale=(0.08, 1)) -> HFlip -> ColorJitter(0.4, 0.4, 0.4, 0)
  -> RandomGrayscale(0.2) -> RandAugment(num_ops=2, magnitude=10) -> ToTensor -> Normalize.
* ``"digits"`` train: RandomAffine(±10°, ±10 % shift, scale 0.9-1.1) -> ToTensor -> Normalize; no flip
  (digits are not mirror-invariant).

The ``cifar`` and ``digits`` train pipelines expect images that are already ``crop x crop`` (32x32).
* eval (every preset): :class:`EvalTransform` = :func:`rescom.preprocess.resize_center_crop` -> /255 ->
  (x - mean) / std, i.e. exactly the arithmetic of the exported ONNX graph and the service.

Both Siamese views use the same pipeline (:class:`TwoViewTransform`). Randomness comes from torch's RNG
(and Python's ``random`` inside torchvision), so DataLoader worker seeding applies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torchvision import transforms as T

from rescom.preprocess import resize_center_crop

__all__ = ["Cutout", "TwoViewTransform", "EvalTransform", "create_transforms", "PRESETS"]

PRESETS = ("cifar", "large_scale", "digits")


class Cutout:
    """Zero ``n_holes`` squares of side ``length`` at random centres (DeVries & Taylor 2017).

    Squares are clipped at the border. Operates on a tensor ``[C, H, W]`` (after ToTensor) and returns a new one.

    Args:
        n_holes: number of squares (>= 0).
        length: side of each square in pixels (>= 0).
    """

    def __init__(self, n_holes: int = 1, length: int = 16) -> None:
        if n_holes < 0 or length < 0:
            raise ValueError(f"Cutout needs n_holes >= 0 and length >= 0, got {n_holes}, {length}")
        self.n_holes, self.length = int(n_holes), int(length)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """``img`` ``[C, H, W]`` with ``n_holes`` squares of side ``length`` (clipped at the border) set to zero.

        Raises:
            TypeError: ``img`` is not a ``[C, H, W]`` tensor (Cutout must come after ``ToTensor``).
        """
        if not isinstance(img, torch.Tensor) or img.ndim != 3:
            raise TypeError(
                f"Cutout expects a tensor [C, H, W] (place it after ToTensor), got {type(img).__name__}"
            )
        h, w = img.shape[-2:]
        mask = torch.ones(h, w, dtype=img.dtype)
        for _ in range(self.n_holes):
            y, x = int(torch.randint(h, ())), int(torch.randint(w, ()))
            y0, y1 = max(0, y - self.length // 2), min(h, y + self.length // 2)
            x0, x1 = max(0, x - self.length // 2), min(w, x + self.length // 2)
            mask[y0:y1, x0:x1] = 0
        return img * mask  # [C, H, W]

    def __repr__(self) -> str:
        return f"Cutout(n_holes={self.n_holes}, length={self.length})"


class TwoViewTransform:
    """Apply the same (random) pipeline twice: ``img -> [view1, view2]`` (the two Siamese views).

    Args:
        transform: the random augmentation applied independently to each view.
    """

    def __init__(self, transform: Callable[[Any], Any]) -> None:
        self.transform = transform

    def __call__(self, img: Any) -> list[Any]:
        """Two independently augmented views ``[view1, view2]`` of ``img``."""
        return [self.transform(img), self.transform(img)]

    def __repr__(self) -> str:
        return f"TwoViewTransform({self.transform!r})"


class EvalTransform:
    """PIL image -> float tensor ``[3, crop, crop]``, identical to the export/serving preprocessing.

    ``resize_center_crop(img, resize, crop)`` (uint8 ``[crop, crop, 3]``) -> float32 / 255 ->
    ``(x - mean) / std`` -> CHW.

    Args:
        resize: shorter side after resizing.
        crop: side of the centre crop.
        mean, std: per-channel normalisation (3 values each).
    """

    def __init__(self, resize: int, crop: int, mean: Sequence[float], std: Sequence[float]) -> None:
        if crop > resize:
            raise ValueError(f"crop ({crop}) must not exceed resize ({resize})")
        self.resize, self.crop = int(resize), int(crop)
        self.mean = torch.tensor([float(m) for m in mean], dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor([float(s) for s in std], dtype=torch.float32).view(3, 1, 1)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """PIL RGB image -> normalised float32 ``[3, crop, crop]``."""
        arr = resize_center_crop(img, self.resize, self.crop)  # uint8 [crop, crop, 3]
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32) / 255.0  # [3, crop, crop]
        return (x - self.mean) / self.std

    def __repr__(self) -> str:
        return f"EvalTransform(resize={self.resize}, crop={self.crop})"


def create_transforms(
    preset: str,
    train: bool,
    resize: int,
    crop: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> Callable[[Image.Image], torch.Tensor]:
    """Build the train or eval transform of a preset (see the module docstring).

    Args:
        preset: one of :data:`PRESETS`.
        train: training augmentation (True) or the deterministic eval transform (False).
        resize: eval shorter side (train presets ignore it).
        crop: output side length.
        mean: per-channel RGB normalisation mean (``[3]``, for inputs in [0, 1]).
        std: per-channel RGB normalisation standard deviation (``[3]``).

    Returns:
        Callable mapping a PIL RGB image to a float tensor ``[3, crop, crop]``.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown transform preset {preset!r}; available: {', '.join(PRESETS)}")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values each, got {mean} / {std}")
    if not train:
        return EvalTransform(resize, crop, mean, std)
    normalize = T.Normalize(mean=list(mean), std=list(std))
    if preset == "cifar":
        steps: list[Any] = [
            T.RandomCrop(crop, padding=4),
            T.RandomHorizontalFlip(),
            T.AutoAugment(T.AutoAugmentPolicy.CIFAR10),
            T.ToTensor(),
            Cutout(n_holes=1, length=16),
            normalize,
        ]
    elif preset == "large_scale":
        steps = [
            T.RandomResizedCrop(crop, scale=(0.08, 1.0)),
            T.RandomHorizontalFlip(),
            T.ColorJitter(0.4, 0.4, 0.4, 0.0),
            T.RandomGrayscale(p=0.2),
            T.RandAugment(num_ops=2, magnitude=10),
            T.ToTensor(),
            normalize,
        ]
    else:  # digits: images are already crop x crop (like CIFAR); no flip
        steps = [
            T.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),
            T.ToTensor(),
            normalize,
        ]
    return T.Compose(steps)
