"""Write a synthetic long-tailed image folder (train/val/test/<class>/*.png) for smoke and GPU checks.

Each class is a distinct coloured pattern plus noise, so a model can learn it; train counts follow the
exponential profile n_i = n_max · IF^(-i/(C-1)); val and test are balanced.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--max-per-class", type=int, default=100)
    p.add_argument("--imbalance-factor", type=float, default=10)
    p.add_argument("--eval-per-class", type=int, default=20)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    c = args.classes
    colours = rng.integers(0, 256, (c, 3))
    freqs = rng.uniform(0.5, 3.0, (c, 2))
    yy, xx = np.mgrid[0 : args.size, 0 : args.size] / args.size

    def sample(k: int) -> Image.Image:
        wave = 0.5 + 0.5 * np.sin(
            2 * np.pi * (freqs[k, 0] * xx + freqs[k, 1] * yy) + rng.uniform(0, 2 * np.pi)
        )
        img = wave[..., None] * colours[k] + rng.normal(0, 25, (args.size, args.size, 3))
        return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))

    for split in ("train", "val", "test"):
        for k in range(c):
            n = (
                int(args.max_per_class * args.imbalance_factor ** (-k / max(c - 1, 1)))
                if split == "train"
                else args.eval_per_class
            )
            folder = Path(args.out) / split / f"class_{k:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                sample(k).save(folder / f"{i:05d}.png")
    print(f"wrote a synthetic {c}-class long-tailed image folder to {args.out}")


if __name__ == "__main__":
    main()
