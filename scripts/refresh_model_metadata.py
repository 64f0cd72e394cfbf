"""Recompute the accuracy figures of an exported version from its ONNX graph and its dataset's test split.

    python scripts/refresh_model_metadata.py --model-repository models --name digits_lt --version 1 \
        --recipe training/configs/digits_lt.yaml

Rewrites only ``metrics`` in ``rescom.json`` (raw and served ``top1`` / ``balanced_acc``, Many/Medium/Few, the
thresholds used) and, when the dataset has a validation split, ``calibration.confusion`` / ``calibration.val_counts``
(what the BBSE and RLLS label-shift estimators need; computed with the recorded ``T`` and ``b``, which are not
refitted); ``model.onnx`` is not touched (its hash stays valid). The thresholds come from ``--recipe``'s
``eval.many_threshold`` / ``eval.few_threshold``, else from the figures already recorded, else 100 / 20. Used to
bring the bundled model's metadata to the format of export/to_onnx.py without retraining.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from export.gate import accuracy_figures, version_logits
from rescom import model_repository as mr
from rescom.config import load_config
from rescom.data import build_datasets
from rescom.data.arrays import split_arrays
from rescom.label_shift import soft_confusion


def _thresholds(meta: dict, recipe: str | None) -> dict[str, int]:
    if recipe is not None:
        evaluation = load_config(recipe).get("eval") or {}
        return {"many": int(evaluation["many_threshold"]), "few": int(evaluation["few_threshold"])}
    recorded = (mr.metrics_summary(meta) or {}).get("thresholds") or {}
    return {"many": int(recorded.get("many", 100)), "few": int(recorded.get("few", 20))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-repository", default="models")
    p.add_argument("--name", required=True)
    p.add_argument("--version", type=mr.parse_version, help="default: the latest complete version")
    p.add_argument("--recipe", help="training config whose eval thresholds apply (e.g. digits_lt.yaml)")
    p.add_argument("--data-dir", help="dataset root (digits_lt needs none)")
    args = p.parse_args(argv)
    version = args.version or mr.latest_version(args.model_repository, args.name)
    meta = mr.read_metadata(args.model_repository, args.name, version)
    splits = build_datasets(meta["dataset"], args.data_dir, **(meta.get("dataset_kwargs") or {}))
    test = split_arrays(splits, "test")
    if test is None:
        print(f"error: dataset {meta['dataset']!r} has no test split", file=sys.stderr)
        return 2
    images, labels = test
    logits = version_logits(args.model_repository, args.name, version, images).astype(np.float64)  # [N, C]
    calibration = meta.get("calibration") or {}
    meta["metrics"] = accuracy_figures(
        logits,
        labels,
        meta["class_counts"],
        calibration.get("temperature"),
        calibration.get("class_bias"),
        _thresholds(meta, args.recipe),
    )
    val = split_arrays(splits, "val")
    if val is not None:
        val_logits = version_logits(args.model_repository, args.name, version, val[0]).astype(np.float64)
        c = len(meta["class_names"])
        t = calibration.get("temperature") or 1.0
        b = np.asarray(calibration.get("class_bias") or np.zeros(c), dtype=np.float64)
        confusion = soft_confusion(val_logits, val[1], c, t, b)  # [C, C]
        calibration["confusion"] = [[round(float(v), 6) for v in row] for row in confusion]
        calibration["val_counts"] = [int(n) for n in np.bincount(val[1], minlength=c)]
        meta["calibration"] = calibration
    mr.write_metadata(mr.version_path(args.model_repository, args.name, version), meta)
    m = meta["metrics"]
    print(
        f"{args.name} v{version} on {m['num_images']} test images (Many n > {m['thresholds']['many']}, "
        f"Few n < {m['thresholds']['few']}):"
    )
    for kind in ("raw", "served"):
        f = m[kind]
        print(
            f"  {kind:6s} top1 {f['top1']:.2f} %  balanced_acc {f['balanced_acc']:.2f} %  many {f['many']:.2f}  "
            f"medium {f['medium']:.2f}  few {f['few']:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
