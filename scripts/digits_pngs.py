"""Write a split of the digits-LT dataset as PNG files: OUT/<class name>/<index>.png and OUT/labels.csv.

    python scripts/digits_pngs.py --split test --out runs/digits_test_png

The PNGs are exactly the images the model sees (32x32 RGB); the service, the load benchmark, the compose
smoke test and the torch-free accuracy check read them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rescom.data import build_datasets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", choices=("train", "val", "test"), default="test")
    p.add_argument("--out", required=True)
    p.add_argument("--imbalance-factor", type=float, default=20)
    args = p.parse_args()
    splits = build_datasets("digits_lt", None, imbalance_factor=args.imbalance_factor)
    dataset = getattr(splits, args.split)
    dataset.transform = None
    out = Path(args.out)
    rows = ["path,label,class_name"]
    for i in range(len(dataset)):
        img, label = dataset[i]
        name = splits.class_names[label]
        path = out / name / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
        rows.append(f"{path.relative_to(out)},{label},{name}")
    (out / "labels.csv").write_text("\n".join(rows) + "\n")
    print(f"wrote {len(dataset)} PNGs of the {args.split} split to {out}")


if __name__ == "__main__":
    main()
