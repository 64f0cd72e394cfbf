"""Label-shift benchmark on a user's own ``imagefolder`` data: top-1 and balanced accuracy per scoring prior.

    python benchmarks/label_shift.py --model-repository models --name digits_lt --data runs/digits_folder

``--data`` holds ``test/<class>/*`` (and ``val/<class>/*``; without it ``--val-from-test`` images per class are
taken out of the test set for calibration). Class folder names must be the model's class names. The exported
ONNX model's raw logits are computed once (ONNX Runtime, the service's preprocessing) and replayed offline
through the service's own adaptive-prior code (:class:`service.priors.AdaptivePrior`, the settings' window and
update interval, one request of ``--request-size`` images at a time: the estimate a request sees is the one
computed before its images are observed, as in the service).

For each validation size (``--val-sizes``, images per class drawn from ``val/``; calibration ``T``, ``b`` and the
soft confusion matrix are refitted on exactly those images) and each stream it scores the priors ``uniform``,
``train``, ``oracle`` (the stream's true class mix; a reference no deployment has) and every adaptive estimator
(``em``, ``map_em``, ``bbse``, ``rlls``, each with and without ``+guard``). Streams:

- ``natural``: the test folder in its on-disk order (class by class: the hardest drift there is);
- ``shuffled``: the test folder shuffled (its natural class frequencies);
- ``drift``: the class mix moves from forward-LT to backward-LT (IF 10) over the stream;
- ``forward-IF`` / ``backward-IF``: the test set resampled to a long-tailed prior (``--shift-ifs``).

Metrics: ``top1`` (fraction of images right) and ``balanced_acc`` (mean per-class accuracy), in %, pooled over
``--repeats`` stream draws, with bootstrap 95 % intervals over images. Writes JSON and Markdown to
``benchmarks/results/`` with the machine, load average and command, and prints the Markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from PIL import Image

from rescom.calibration import (
    CALIBRATION_FITS,
    calibrate_logits,
    fit_calibration_for_split,
    log_prior,
    prior_from_counts,
)
from rescom.evaluation.shift import make_shifted_set
from rescom.label_shift import DEFAULT_ESTIMATOR, ESTIMATORS, soft_confusion
from rescom.preprocess import resize_center_crop
from service.config import Settings
from service.priors import AdaptivePrior

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")
ADAPTIVE = [f"{e}{g}" for e in ESTIMATORS for g in ("", "+guard")]
FIXED = ("uniform", "train", "oracle")


@dataclass(frozen=True)
class Calibrated:
    """What export would record for one validation subset: ``T``, ``b``, the soft confusion ``M``, ``n_val``."""

    temperature: float
    bias: np.ndarray | None
    confusion: np.ndarray
    n_val: int
    fit: str


def list_split(root: Path, class_names: list[str]) -> tuple[list[Path], np.ndarray]:
    """Image paths and labels of ``root/<class>/**`` in on-disk order (classes sorted, files sorted)."""
    index = {name: i for i, name in enumerate(class_names)}
    paths: list[Path] = []
    labels: list[int] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name not in index:
            raise SystemExit(
                f"{folder}: class {folder.name!r} is not one of the model's classes {class_names}"
            )
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)
        paths += files
        labels += [index[folder.name]] * len(files)
    if not paths:
        raise SystemExit(f"{root}: no images found in class sub-folders")
    return paths, np.asarray(labels, dtype=np.int64)


def onnx_logits(model_dir: Path, meta: dict[str, Any], paths: list[Path], cache: Path) -> np.ndarray:
    """Raw logits ``[N, C]`` of the images (cached by model hash and file list)."""
    key = f"{meta['onnx']['sha256'][:12]}-{abs(hash(tuple(map(str, paths)))) % 10**10}"
    cached = cache / f"logits-{key}.npy"
    if cached.exists():
        return np.load(cached)
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    pre = meta["preprocess"]
    out = []
    for i in range(0, len(paths), 64):
        batch = np.stack(
            [
                resize_center_crop(Image.open(p), pre["resize"], pre["crop"], exif_transpose=True)
                for p in paths[i : i + 64]
            ]
        )  # [b, H, W, 3] uint8
        out.append(session.run(["logits"], {"images": batch})[0])
    logits = np.concatenate(out)  # [N, C]
    cache.mkdir(parents=True, exist_ok=True)
    np.save(cached, logits)
    return logits


def make_streams(
    labels: np.ndarray, shift_ifs: list[float], repeats: int, num_classes: int
) -> dict[str, list]:
    """Stream name -> list of ``repeats`` index arrays into the test set."""
    streams: dict[str, list[np.ndarray]] = {"natural": [np.arange(len(labels))] * 1}
    streams["shuffled"] = [np.random.default_rng(s).permutation(len(labels)) for s in range(repeats)]
    streams["drift"] = [drift_stream(labels, num_classes, 10.0, s) for s in range(repeats)]
    for kind in ("forward", "backward"):
        for imb in shift_ifs:
            name = f"{kind}-{imb:g}"
            streams[name] = [
                make_shifted_set(labels, kind, imb, s, num_classes).indices for s in range(repeats)
            ]
    return streams


def drift_stream(labels: np.ndarray, num_classes: int, imb: float, seed: int) -> np.ndarray:
    """``len(labels)`` draws whose class mix moves log-linearly from forward-LT to backward-LT (IF ``imb``)."""
    rng = np.random.default_rng(seed)
    fwd = np.log(imb ** (-np.arange(num_classes) / max(num_classes - 1, 1)))  # [C] log profile
    by_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
    present = np.array([len(ix) > 0 for ix in by_class])
    out = np.empty(len(labels), dtype=np.int64)
    for i, t in enumerate(np.linspace(0.0, 1.0, len(labels))):
        w = np.exp((1 - t) * fwd + t * fwd[::-1]) * present  # [C]
        c = rng.choice(num_classes, p=w / w.sum())
        out[i] = rng.choice(by_class[c])
    return out


def calibrate(val_z: np.ndarray, val_y: np.ndarray, per_class: int, fit: str, seed: int) -> Calibrated:
    """Refit ``T``, ``b`` and ``M`` on ``per_class`` validation images per class (all when ``<= 0``)."""
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(val_y):
        idx = np.flatnonzero(val_y == c)
        keep.append(idx if per_class <= 0 else rng.permutation(idx)[:per_class])
    sel = np.concatenate(keep)
    t, b, used = fit_calibration_for_split(val_z[sel], val_y[sel], fit=fit)
    c = val_z.shape[1]
    return Calibrated(t, b, soft_confusion(val_z[sel], val_y[sel], c, t, b), len(sel), used)


async def replay_adaptive(
    z: np.ndarray, cal: Calibrated, estimator: str, train_prior: np.ndarray, request_size: int
) -> np.ndarray:
    """Predictions ``[N]`` of the service's adaptive prior replayed over a stream of raw logits ``z``."""
    defaults = {k: f.default for k, f in Settings.model_fields.items()}  # the service's settings, unvalidated
    state = AdaptivePrior(
        z.shape[1],
        cal.temperature,
        window=defaults["adaptive_window"],
        alpha=defaults["adaptive_alpha"],
        update_every=defaults["adaptive_update_every"],
        class_bias=cal.bias,
        estimator=estimator,
        train_prior=train_prior,
        confusion=cal.confusion,
        n_val=cal.n_val,
    )
    a = calibrate_logits(z, cal.temperature, cal.bias)  # [N, C]
    preds = np.empty(len(z), dtype=np.int64)
    for i in range(0, len(z), request_size):
        pi = await state.estimate()
        preds[i : i + request_size] = np.argmax(a[i : i + request_size] + log_prior(pi), axis=1)
        state.observe(z[i : i + request_size].astype(np.float32))
    return preds


def scores(preds: np.ndarray, labels: np.ndarray, num_classes: int, boot: int, seed: int) -> dict[str, Any]:
    """``top1`` and ``balanced_acc`` in % with bootstrap 95 % intervals (resampling images)."""
    correct = (preds == labels).astype(np.float64)

    def balanced(idx: np.ndarray) -> float:
        hits = np.bincount(labels[idx], weights=correct[idx], minlength=num_classes)
        n = np.bincount(labels[idx], minlength=num_classes)
        return float(np.mean(hits[n > 0] / n[n > 0]))

    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(labels), len(labels)) for _ in range(boot)]
    top = [float(correct[d].mean()) for d in draws]
    bal = [balanced(d) for d in draws]
    everything = np.arange(len(labels))
    return {
        "top1": 100 * float(correct.mean()),
        "top1_ci": [100 * float(np.percentile(top, 2.5)), 100 * float(np.percentile(top, 97.5))],
        "balanced_acc": 100 * balanced(everything),
        "balanced_acc_ci": [100 * float(np.percentile(bal, 2.5)), 100 * float(np.percentile(bal, 97.5))],
    }


def run_stream(
    z: np.ndarray, y: np.ndarray, draws: list[np.ndarray], cal: Calibrated, train_prior: np.ndarray, args
) -> dict[str, Any]:
    """Every prior on one stream (pooled over its draws)."""
    c = z.shape[1]
    labels = np.concatenate([y[d] for d in draws])
    a_all = [calibrate_logits(z[d], cal.temperature, cal.bias) for d in draws]
    out: dict[str, Any] = {}
    for prior in FIXED:
        preds = []
        for d, a in zip(draws, a_all, strict=True):
            pi = {"uniform": np.full(c, 1 / c), "train": train_prior}.get(prior)
            if pi is None:  # oracle: the draw's realised class mix
                pi = np.bincount(y[d], minlength=c) / len(d)
            preds.append(np.argmax(a + log_prior(pi), axis=1))
        out[prior] = scores(np.concatenate(preds), labels, c, args.bootstrap, 0)
    for est in ADAPTIVE:
        preds = [asyncio.run(replay_adaptive(z[d], cal, est, train_prior, args.request_size)) for d in draws]
        out[est] = scores(np.concatenate(preds), labels, c, args.bootstrap, 0)
    return out


def check_target(result: dict[str, Any], estimator: str) -> dict[str, Any]:
    """The target: top-1 >= max(uniform, train) - 0.3 and balanced >= uniform - 1.0.

    ``oracle_ok`` says whether the true prior itself meets it: under a strong forward shift the prior that
    maximises top-1 gives up balanced accuracy, so no estimator can meet both halves there.
    """
    best_fixed = max(result["uniform"]["top1"], result["train"]["top1"])

    def gaps(prior: str) -> tuple[float, float]:
        return (
            result[prior]["top1"] - best_fixed,
            result[prior]["balanced_acc"] - result["uniform"]["balanced_acc"],
        )

    top_gap, bal_gap = gaps(estimator)
    o_top, o_bal = gaps("oracle")
    return {
        "top1_gap": top_gap,
        "balanced_gap": bal_gap,
        "ok": top_gap >= -0.3 and bal_gap >= -1.0,
        "oracle_ok": o_top >= -0.3 and o_bal >= -1.0,
    }


def estimator_summary(blocks: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per adaptive estimator over every (calibration, validation size, stream) cell: cells meeting the target,
    mean and worst top-1 gap to the better fixed prior, mean and worst balanced gap to uniform."""
    out = {}
    for est in ADAPTIVE:
        checks = [check_target(res, est) for b in blocks for res in b["streams"].values()]
        top = [c["top1_gap"] for c in checks]
        bal = [c["balanced_gap"] for c in checks]
        out[est] = {
            "cells_ok": sum(c["ok"] for c in checks),
            "cells": len(checks),
            "top1_gap_mean": float(np.mean(top)),
            "top1_gap_worst": float(np.min(top)),
            "balanced_gap_mean": float(np.mean(bal)),
            "balanced_gap_worst": float(np.min(bal)),
        }
    return out


def markdown(report: dict[str, Any]) -> str:
    """Tables: per (calibration, validation size), streams x priors, top-1 / balanced accuracy."""
    lines = [
        f"# Label-shift benchmark: {report['model']}",
        "",
        f"`{report['command']}`",
        "",
        f"Machine: {report['machine']}; load average before / after: {report['load_before']} / "
        f"{report['load_after']}; {report['seconds']:.0f} s. Test images: {report['test_images']}, "
        f"validation images per class available: {report['val_per_class_available']}. "
        f"Default estimator: `{report['default_estimator']}`. Cells: top-1 / balanced accuracy (%).",
    ]
    priors = list(FIXED) + ADAPTIVE
    for block in report["blocks"]:
        lines += [
            "",
            f"## calibration `{block['calibration']}` (used: {block['fit_used']}), "
            f"{block['val_per_class']} validation images per class (T = {block['temperature']:.3f})",
            "",
            "| stream | " + " | ".join(priors) + " | target |",
            "|---" * (len(priors) + 2) + "|",
        ]
        for stream, res in block["streams"].items():
            cells = [f"{res[p]['top1']:.1f} / {res[p]['balanced_acc']:.1f}" for p in priors]
            t = res["target"]
            mark = "ok" if t["ok"] else f"MISS ({t['top1_gap']:+.1f} / {t['balanced_gap']:+.1f})"
            if not t["ok"] and not t["oracle_ok"]:
                mark += ", oracle misses too"
            lines.append(f"| {stream} | " + " | ".join(cells) + f" | {mark} |")
    lines += [
        "",
        "## Estimators over all cells",
        "",
        "Target per cell: top-1 >= max(uniform, train) - 0.3 and balanced >= uniform - 1.0. Gaps in points.",
        "",
        "| estimator | cells ok | top-1 gap mean | top-1 gap worst | balanced gap mean | balanced gap worst |",
        "|---|---|---|---|---|---|",
    ]
    for est, v in report["estimators"].items():
        lines.append(
            f"| {est} | {v['cells_ok']}/{v['cells']} | {v['top1_gap_mean']:+.2f} | {v['top1_gap_worst']:+.2f} | "
            f"{v['balanced_gap_mean']:+.2f} | {v['balanced_gap_worst']:+.2f} |"
        )
    lines += ["", "95 % bootstrap intervals (top-1; balanced) are in the JSON next to this file."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-repository", default="models")
    p.add_argument("--name", default="digits_lt")
    p.add_argument("--version", type=int, help="default: latest")
    p.add_argument("--data", required=True, help="imagefolder root with test/<class>/* (and val/<class>/*)")
    p.add_argument("--val-sizes", default="3,5,10,0", help="validation images per class (0 = all)")
    p.add_argument("--val-from-test", type=int, default=10, help="per class, when DATA has no val/")
    p.add_argument("--calibrations", default="auto", help=f"comma list of {', '.join(CALIBRATION_FITS)}")
    p.add_argument("--shift-ifs", default="10,50", help="imbalance factors of the forward/backward streams")
    p.add_argument("--repeats", type=int, default=3, help="draws of each random stream")
    p.add_argument("--request-size", type=int, default=4, help="images per simulated request")
    p.add_argument("--bootstrap", type=int, default=300, help="bootstrap resamples for the intervals")
    p.add_argument("--estimator", default=DEFAULT_ESTIMATOR, help="the estimator the target is checked for")
    p.add_argument("--out", default="benchmarks/results", help="folder for the JSON and Markdown")
    p.add_argument("--tag", default="", help="suffix of the result file names")
    return p.parse_args(argv)


def load_model(args) -> tuple[Path, dict[str, Any]]:
    model_dir = Path(args.model_repository) / args.name
    if not model_dir.is_dir():
        raise SystemExit(f"no model {args.name!r} in {args.model_repository}")
    version = args.version or max(int(d.name) for d in model_dir.iterdir() if d.name.isdigit())
    return model_dir / str(version), json.loads((model_dir / str(version) / "rescom.json").read_text())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, load_before = time.time(), os.getloadavg()
    model_dir, meta = load_model(args)
    names, data = meta["class_names"], Path(args.data)
    cache = Path("runs") / "label_shift_cache"
    test_paths, test_y = list_split(data / "test", names)
    test_z = onnx_logits(model_dir, meta, test_paths, cache)
    if (data / "val").is_dir():
        val_paths, val_y = list_split(data / "val", names)
        val_z = onnx_logits(model_dir, meta, val_paths, cache)
    else:  # carve a validation split out of the test set
        rng = np.random.default_rng(0)
        take = np.concatenate(
            [rng.permutation(np.flatnonzero(test_y == c))[: args.val_from_test] for c in np.unique(test_y)]
        )
        rest = np.setdiff1d(np.arange(len(test_y)), take)
        val_z, val_y, test_z, test_y = test_z[take], test_y[take], test_z[rest], test_y[rest]
    c = len(names)
    train_prior = prior_from_counts(meta["class_counts"])
    streams = make_streams(test_y, [float(x) for x in args.shift_ifs.split(",")], args.repeats, c)
    blocks = []
    for fit in args.calibrations.split(","):
        for per_class in [int(v) for v in args.val_sizes.split(",")]:
            cal = calibrate(val_z, val_y, per_class, fit, seed=per_class)
            block = {
                "calibration": fit,
                "fit_used": cal.fit,
                "val_per_class": per_class if per_class > 0 else "all",
                "n_val": cal.n_val,
                "temperature": cal.temperature,
                "streams": {},
            }
            for stream, draws in streams.items():
                res = run_stream(test_z, test_y, draws, cal, train_prior, args)
                res["target"] = check_target(res, args.estimator)
                block["streams"][stream] = res
                print(f"{fit} val={block['val_per_class']} {stream}: {res['target']}", flush=True)
            blocks.append(block)
    report = {
        "model": f"{args.name} v{meta['version']} ({meta.get('method')}, {meta.get('dataset')})",
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, {platform.system()}",
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "seconds": time.time() - started,
        "test_images": len(test_y),
        "val_per_class_available": int(np.bincount(val_y, minlength=c).min()),
        "default_estimator": args.estimator,
        "blocks": blocks,
        "estimators": estimator_summary(blocks),
        "all_targets_met": all(s["target"]["ok"] for b in blocks for s in b["streams"].values()),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"label_shift_{args.name}{'_' + args.tag if args.tag else ''}"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    (out / f"{stem}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
