"""Accuracy of an exported model on a folder of images, with ONNX Runtime only (no torch).

    python scripts/onnx_accuracy.py --model-repository models --name digits_lt --images runs/digits_test_png

Reads OUT/labels.csv as written by scripts/digits_pngs.py (path,label,...), preprocesses every image exactly as
the service does (rescom.preprocess), runs the model's raw logits and prints top-1 accuracy next to the
accuracy recorded at training time (rescom.json "metrics").
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import onnxruntime as ort
from PIL import Image

from rescom import model_repository as mr
from rescom.calibration import calibrate_logits, parse_class_bias
from rescom.preprocess import resize_center_crop


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-repository", default="models")
    p.add_argument("--name", default="digits_lt")
    p.add_argument("--version", type=int, help="default: latest")
    p.add_argument("--images", required=True, help="folder with labels.csv")
    args = p.parse_args()
    version = args.version or mr.latest_version(args.model_repository, args.name)
    meta = mr.read_metadata(args.model_repository, args.name, version)
    graph = mr.version_path(args.model_repository, args.name, version) / meta["onnx"]["file"]
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
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
    raw = 100.0 * float(np.mean(logits.argmax(axis=1) == labels))
    calibration = meta.get("calibration") or {}
    bias = parse_class_bias(calibration.get("class_bias"), logits.shape[1])
    served_logits = calibrate_logits(logits, calibration.get("temperature") or 1.0, bias)  # [N, C]
    served = 100.0 * float(np.mean(served_logits.argmax(axis=1) == labels))
    recorded = (mr.metrics_summary(meta) or {}).get("headline")
    print(
        f"{args.name} v{version}: top-1 served (calibrated, uniform prior) {served:.2f} %, raw argmax "
        f"{raw:.2f} % on {len(labels)} images (onnxruntime, no torch); recorded: "
        f"{recorded if recorded is None else f'{recorded:.2f} %'}; torch imported: {'torch' in sys.modules}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
