"""Accuracy of an exported model on a folder of images, with ONNX Runtime only (no torch).

    python scripts/onnx_accuracy.py --model-repository models --name digits_lt --images runs/digits_test_png

Reads OUT/labels.csv as written by scripts/digits_pngs.py (path,label,...), preprocesses every image exactly as
the service does (rescom.preprocess), runs the model's raw logits and prints top-1 accuracy next to the
accuracy recorded at training time (rescom.json "metrics").
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import onnxruntime as ort
from PIL import Image

from rescom.preprocess import resize_center_crop


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-repository", default="models")
    p.add_argument("--name", default="digits_lt")
    p.add_argument("--version", type=int, help="default: latest")
    p.add_argument("--images", required=True, help="folder with labels.csv")
    args = p.parse_args()
    model_dir = Path(args.model_repository) / args.name
    version = args.version or max(int(d.name) for d in model_dir.iterdir() if d.name.isdigit())
    meta = json.loads((model_dir / str(version) / "rescom.json").read_text())
    session = ort.InferenceSession(
        str(model_dir / str(version) / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    pre = meta["preprocess"]
    with (Path(args.images) / "labels.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    images = np.stack(
        [
            resize_center_crop(
                Image.open(Path(args.images) / r["path"]), pre["resize"], pre["crop"], exif_transpose=True
            )
            for r in rows
        ]
    )  # [N, H, W, 3] uint8
    labels = np.array([int(r["label"]) for r in rows])
    logits = np.concatenate(
        [session.run(["logits"], {"images": images[i : i + 64]})[0] for i in range(0, len(images), 64)]
    )
    acc = 100.0 * float(np.mean(logits.argmax(axis=1) == labels))
    recorded = (meta.get("metrics") or {}).get("acc")
    print(
        f"{args.name} v{version}: top-1 {acc:.2f} % on {len(labels)} images (onnxruntime, no torch); "
        f"recorded at training: {recorded if recorded is None else f'{recorded:.2f} %'}; "
        f"torch imported: {'torch' in sys.modules}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
