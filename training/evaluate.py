"""Evaluation report of served models: accuracy groups, calibration per prior, confusions, label-shift study.

    python training/evaluate.py --model-repository models --name digits_lt --many-threshold 50 --out report/
    python training/evaluate.py --name rescom --name balanced_softmax --name ce --out report/   # one table
    python training/evaluate.py --checkpoint runs/digits_lt/best.pt --out report/               # torch, no export

An exported model (``models/NAME/N/{model.onnx, rescom.json}``) runs in ONNX Runtime, exactly as served; a
checkpoint runs in torch (``InferenceModel``: encoder + classifier). The test images come from
:func:`rescom.data.arrays.split_arrays` (the serving preprocessing) of the dataset the model records
(``rescom.json`` ``dataset`` / ``dataset_kwargs``; ``--data`` / ``--data-kwarg`` override), and the training
counts ``π_train`` from the model itself. Writes ``report.html`` (self-contained), ``report.json`` and the PNGs
into ``--out``. The numbers and figures come from :mod:`rescom.evaluation` (numpy + matplotlib, logits in).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import yaml

from rescom import model_repository as mr
from rescom.calibration import parse_class_bias, prior_from_counts
from rescom.checkpoint import to_plain
from rescom.evaluation import DEFAULT_EM_ALPHA, DEFAULT_SHIFT_FACTORS, SHIFT_KINDS, evaluate_logits
from rescom.evaluation.report import EM_MAX_ITER, EM_TOL

log = logging.getLogger("rescom.evaluate")

Predict = Callable[[np.ndarray], np.ndarray]  # uint8 [B, H, W, 3] -> float32 logits [B, C]


@dataclass
class LoadedModel:
    """A model ready to score images, with what the report needs to know about it."""

    label: str
    source: str
    method: str | None
    dataset: str
    dataset_kwargs: dict[str, Any]
    class_names: list[str]
    class_counts: list[int]
    temperature: float | None
    resize: int
    crop: int
    predict: Predict
    info: dict[str, Any] = field(default_factory=dict)
    class_bias: list[float] | None = None  # b of BCTS (calibration.class_bias); None = 0
    thresholds: dict[str, int] | None = None  # Many-shot n > many, Few-shot n < few, as recorded by the model

    def shot_thresholds(self, many: int | None, few: int | None) -> tuple[int, int]:
        """``(many, few)``: the command line's when given, else the model's recorded ones, else 100 / 20."""
        recorded = self.thresholds or {}
        return (
            many if many is not None else int(recorded.get("many", 100)),
            few if few is not None else int(recorded.get("few", 20)),
        )


# --- model loading ---------------------------------------------------------------------------------------------


def load_onnx_model(repository: str | Path, name: str, version: int | None = None) -> LoadedModel:
    """``repository/name/version`` (latest when ``None``) as an ONNX Runtime session on the CPU."""
    import onnxruntime as ort

    if not (Path(repository) / name).is_dir():
        found = mr.list_models(repository)
        raise FileNotFoundError(f"model {name!r} not found in {repository}; models there: {found or 'none'}")
    version = mr.latest_version(repository, name) if version is None else int(version)
    vdir = mr.version_path(repository, name, version)
    if not mr.metadata_path(repository, name, version).is_file():
        raise FileNotFoundError(
            f"{mr.metadata_path(repository, name, version)} not found (complete versions: "
            f"{mr.list_versions(repository, name, complete=True)})"
        )
    meta = mr.read_metadata(repository, name, version)
    calibration = meta.get("calibration") or {}
    bias = parse_class_bias(calibration.get("class_bias"), len(meta["class_names"]))
    onnx_path = vdir / (meta.get("onnx") or {}).get("file", "model.onnx")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def predict(images: np.ndarray) -> np.ndarray:
        return session.run(["logits"], {input_name: images})[0]  # [B, C]

    pre = meta["preprocess"]
    return LoadedModel(
        label=f"{name}/{version}",
        source=str(onnx_path),
        method=meta.get("method"),
        dataset=meta["dataset"],
        dataset_kwargs=dict(meta.get("dataset_kwargs") or {}),
        class_names=[str(c) for c in meta["class_names"]],
        class_counts=[int(c) for c in meta["class_counts"]],
        temperature=calibration.get("temperature"),
        resize=int(pre["resize"]),
        crop=int(pre["crop"]),
        predict=predict,
        info={"runtime": f"onnxruntime {ort.__version__}", "metrics_at_export": mr.metrics_summary(meta)},
        class_bias=None if bias is None else bias.tolist(),
        thresholds=(mr.metrics_summary(meta) or {}).get("thresholds"),
    )


def load_torch_model(checkpoint: str | Path) -> LoadedModel:
    """A training checkpoint (``best.pt``) as encoder + classifier in torch on the CPU, normalising in-graph."""
    import torch

    from rescom.checkpoint import load_checkpoint, model_from_checkpoint
    from rescom.models import InferenceModel

    state = load_checkpoint(checkpoint)
    meta = state["meta"]
    net = InferenceModel(model_from_checkpoint(state)).eval()
    mean = torch.tensor(meta["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(meta["std"], dtype=torch.float32).view(1, 3, 1, 1)

    def predict(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # [B, 3, H, W]
            return net((x - mean) / std).float().numpy()  # [B, C]

    path = Path(checkpoint)
    return LoadedModel(
        label=f"{path.parent.name}/{path.stem}",
        source=str(path),
        method=meta.get("method"),
        dataset=meta["dataset"],
        dataset_kwargs=dict(meta.get("dataset_kwargs") or {}),
        class_names=[str(c) for c in meta["class_names"]],
        class_counts=[int(c) for c in meta["class_counts"]],
        temperature=meta.get("temperature"),
        resize=int(meta["resize"]),
        crop=int(meta["crop"]),
        predict=predict,
        info={"runtime": f"torch {torch.__version__}", "metrics_at_training": meta.get("metrics")},
        thresholds=_config_thresholds(state.get("config") or {}),
    )


def _config_thresholds(config: dict[str, Any]) -> dict[str, int] | None:
    evaluation = config.get("eval") or {}
    if "many_threshold" not in evaluation or "few_threshold" not in evaluation:
        return None
    return {"many": int(evaluation["many_threshold"]), "few": int(evaluation["few_threshold"])}


def parse_model_spec(spec: str, default_version: int | None) -> tuple[str, int | None]:
    """``NAME`` or ``NAME:VERSION`` → ``(name, version)``."""
    name, _, version = spec.partition(":")
    if not version:
        return name, default_version
    try:
        return name, mr.parse_version(version)
    except ValueError:
        raise ValueError(
            f"--name takes NAME or NAME:VERSION with a positive integer version, got {spec!r}"
        ) from None


# --- data --------------------------------------------------------------------------------------------------------


def parse_kwargs(items: Sequence[str]) -> dict[str, Any]:
    """``["imbalance_factor=20", "seed=1"]`` → ``{"imbalance_factor": 20, "seed": 1}`` (YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--data-kwarg {item!r} is not of the form key=value (e.g. imbalance_factor=20)")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw)
    return out


def load_split(
    model: LoadedModel,
    data: str | None,
    data_dir: str | None,
    overrides: dict[str, Any],
    split: str,
    limit: int | None,
    cache: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Images ``[N, crop, crop, 3]`` uint8 and labels ``[N]`` of the model's dataset split (cached per dataset).

    Raises:
        ValueError: the dataset's training counts, classes or image size differ from the model's (wrong
            dataset or kwargs: the test split would not be the one the model was trained against).
    """
    from rescom.data import build_datasets
    from rescom.data.arrays import split_arrays

    name = data or model.dataset
    kwargs = {**model.dataset_kwargs, **overrides}
    key = json.dumps([name, data_dir, kwargs, split, limit], sort_keys=True, default=str)
    if key not in cache:
        splits = build_datasets(name, data_dir, **kwargs)
        arrays = split_arrays(splits, split, limit)
        if arrays is None:
            raise ValueError(f"dataset {name!r} has no {split!r} split (or it is empty); try --split test")
        cache[key] = (splits, arrays)
    splits, (images, labels) = cache[key]
    if list(splits.class_counts) != model.class_counts:
        raise ValueError(
            f"dataset {name!r} with kwargs {kwargs} has training counts {list(splits.class_counts)[:10]}..., the "
            f"model {model.label} was trained on {model.class_counts[:10]}...; pass the training kwargs with "
            "--data-kwarg key=value (e.g. imbalance_factor=20)"
        )
    if (splits.resize, splits.crop) != (model.resize, model.crop):
        raise ValueError(
            f"dataset {name!r} is evaluated at resize/crop {splits.resize}/{splits.crop}, the model "
            f"expects {model.resize}/{model.crop}"
        )
    return images, labels, {"dataset": name, "dataset_kwargs": kwargs, "split": split}


def predict_logits(model: LoadedModel, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Raw logits ``[N, C]`` (float32) in batches of ``batch_size``."""
    parts = [
        model.predict(np.ascontiguousarray(images[i : i + batch_size]))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts).astype(np.float32)


# --- report ------------------------------------------------------------------------------------------------------


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "model"


def write_report(
    entries: list[dict[str, Any]],
    out_dir: Path,
    command: str,
    settings: dict[str, Any],
    embed_images: bool = True,
) -> dict[str, Path]:
    """PNGs per model (+ a cross-model label-shift figure), ``report.json`` and ``report.html`` in ``out_dir``."""
    from rescom.evaluation.html import write_html
    from rescom.evaluation.plots import (
        plot_confusions,
        plot_label_shift,
        plot_label_shift_comparison,
        plot_per_class_accuracy,
        plot_reliability,
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for entry in entries:
        slug = _slug(entry["label"])
        while slug in used:
            slug += "_"
        used.add(slug)
        r, title = entry["results"], entry["label"]
        th = r["thresholds"]
        entry["plots"] = {
            f"{title}: per-class accuracy (uniform prior) vs training count": plot_per_class_accuracy(
                r["longtail"]["uniform"]["per_class_acc"],
                entry["class_counts"],
                out_dir / f"{slug}_per_class.png",
                th["many"],
                th["few"],
                title=f"{title}: per-class accuracy vs training count",
                class_names=entry.get("class_names"),
            ),
            f"{title}: reliability diagrams": plot_reliability(
                r["reliability"],
                r["calibration"],
                out_dir / f"{slug}_reliability.png",
                r["temperature"],
                title=f"{title}: reliability",
                class_bias=r.get("class_bias") is not None,
            ),
            f"{title}: most confused classes": plot_confusions(
                r["confusion_matrix"],
                r["confusion_classes"],
                entry["class_names"],
                r["confusions"],
                out_dir / f"{slug}_confusions.png",
                title=title,
            ),
            f"{title}: label-shift study": plot_label_shift(
                r["label_shift"]["summary"],
                out_dir / f"{slug}_label_shift.png",
                title=f"{title}: label shift (mean ± std over {settings['seeds']} seeds)",
            ),
        }
    comparison = {}
    if len(entries) > 1:
        comparison["all models: adaptive prior under label shift"] = plot_label_shift_comparison(
            {e["label"]: e["results"]["label_shift"]["summary"] for e in entries},
            out_dir / "comparison_label_shift.png",
        )
    report = {
        "command": command,
        "settings": settings,
        "comparison_plots": comparison,
        "models": [{**e, "plots": {k: Path(v).name for k, v in e["plots"].items()}} for e in entries],
    }
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(to_plain(report), indent=1, default=str))
    notes = [
        f"Label-shift study: kinds {settings['shift_kinds']}, IF {settings['shift_factors']}, "
        f"{settings['seeds']} seeds (0..{settings['seeds'] - 1}); EM: Dirichlet alpha = {settings['em_alpha']}, "
        f"uniform start, {EM_MAX_ITER} iterations at most, tolerance {EM_TOL:g} (rescom.calibration.em_prior; "
        "the service's settings).",
        "Calibrated logits are z / T + b (rescom.calibration.calibrate_logits, as served): T and the per-class "
        "bias b fitted on the validation split at export (BCTS; b = 0 when the model records none). 'raw' "
        "columns use z itself. The adaptive prior's EM runs on the calibrated logits.",
        "The uniform set is the whole balanced test split in every seed, so its numbers do not vary with the "
        "seed; small forward/backward sets keep few rare-class images: gaps of a few tenths of a point are a "
        "handful of images.",
        "report.json holds every number of this page, including the per-seed records of the label-shift study.",
    ]
    html_path = write_html(
        out_dir / "report.html",
        entries,
        command=command,
        notes=notes,
        embed_images=embed_images,
        comparison_plots=comparison,
    )
    return {"html": html_path, "json": json_path}


def _log_summary(entries: list[dict[str, Any]]) -> None:
    for e in entries:
        r = e["results"]
        lt, cal = r["longtail"]["uniform"], r["calibration"]
        log.info(
            "%s (%s): top-1 %.2f  many %s  medium %s  few %s | ECE uniform %.2f%% -> %.2f%% with T=%s",
            e["label"],
            e.get("method"),
            lt["acc"],
            *(f"{lt[g]:.2f}" if lt[g] is not None else "-" for g in ("many", "medium", "few")),
            100 * cal["uniform"]["raw"]["ece"],
            100 * cal["uniform"]["scaled"]["ece"],
            r["temperature"],
        )
        for s in r["label_shift"]["summary"]:
            log.info(
                "  %-12s n=%5.0f  %s",
                s["set"],
                s["size"],
                "  ".join(f"{m} {v['acc']:6.2f}" for m, v in s["methods"].items()),
            )


# --- CLI ---------------------------------------------------------------------------------------------------------


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Evaluation report (HTML + JSON + PNGs) of exported models or checkpoints."
    )
    p.add_argument(
        "--model-repository", default="models", help="model repository root (default: %(default)s)"
    )
    p.add_argument(
        "--name",
        action="append",
        default=[],
        metavar="NAME[:VERSION]",
        help="exported model to evaluate with ONNX Runtime; repeat to compare several",
    )
    p.add_argument(
        "--version", type=int, help="version for every --name without :VERSION (default: the latest)"
    )
    p.add_argument(
        "--checkpoint", action="append", default=[], help="training checkpoint to run in torch; repeatable"
    )
    p.add_argument("--data", help="dataset name (default: the one the model records)")
    p.add_argument("--data-dir", help="dataset root (ignored by digits_lt)")
    p.add_argument(
        "--data-kwarg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dataset option overriding the recorded ones, e.g. imbalance_factor=20; repeatable",
    )
    p.add_argument(
        "--split", default="test", choices=["test", "val", "train"], help="split (default: %(default)s)"
    )
    p.add_argument("--limit", type=int, help="use only the first N images of the split (smoke tests)")
    p.add_argument("--out", default="report", help="output folder (default: %(default)s)")
    p.add_argument(
        "--many-threshold",
        type=int,
        help="Many-shot: n > this (default: the model's recorded threshold, else 100)",
    )
    p.add_argument(
        "--few-threshold", type=int, help="Few-shot: n < this (default: the model's recorded one, else 20)"
    )
    p.add_argument(
        "--em-alpha",
        type=float,
        default=DEFAULT_EM_ALPHA,
        help="Dirichlet alpha of the EM M-step, >= 1 (default: %(default)s)",
    )
    p.add_argument(
        "--shift-factors",
        type=float,
        nargs="+",
        default=list(DEFAULT_SHIFT_FACTORS),
        help="imbalance factors IF of the shifted test sets (default: %(default)s)",
    )
    p.add_argument(
        "--shift-kinds",
        nargs="+",
        default=list(SHIFT_KINDS),
        choices=SHIFT_KINDS,
        help="shifted test priors (default: all)",
    )
    p.add_argument(
        "--seeds", type=int, default=5, help="resampling seeds 0..N-1 per shifted set (default: %(default)s)"
    )
    p.add_argument(
        "--source-prior",
        default="uniform",
        choices=["uniform", "train", "auto"],
        help="prior the logits are calibrated for: uniform (the serving contract, Balanced Softmax), train "
        "(plain CE: posteriors become softmax(z/T - log pi_train + log pi)) or auto (train for method 'ce', "
        "uniform otherwise) (default: %(default)s)",
    )
    p.add_argument("--bins", type=int, default=15, help="reliability / ECE bins (default: %(default)s)")
    p.add_argument(
        "--top-confusions", type=int, default=10, help="most confused pairs shown (default: %(default)s)"
    )
    p.add_argument("--batch-size", type=int, default=256, help="inference batch size (default: %(default)s)")
    p.add_argument("--save-logits", action="store_true", help="also write LABEL_logits.npz (logits, labels)")
    p.add_argument(
        "--link-images", action="store_true", help="link the PNGs from report.html instead of embedding"
    )
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the evaluation; returns ``report.json``'s content plus the written paths under ``"paths"``."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.name and not args.checkpoint:
        raise SystemExit(
            "error: nothing to evaluate; give --name NAME (exported model) and/or --checkpoint PATH"
        )
    if args.seeds < 1:
        raise SystemExit(f"error: --seeds must be >= 1, got {args.seeds}")
    if args.em_alpha < 1:
        raise SystemExit(
            f"error: --em-alpha must be >= 1 (1 = plain maximum likelihood), got {args.em_alpha}"
        )
    if any(f < 1 for f in args.shift_factors):
        raise SystemExit(f"error: --shift-factors must all be >= 1, got {args.shift_factors}")
    command = "python training/evaluate.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    overrides = parse_kwargs(args.data_kwarg)

    models = [load_onnx_model(args.model_repository, *parse_model_spec(s, args.version)) for s in args.name]
    models += [load_torch_model(c) for c in args.checkpoint]
    out_dir = Path(args.out)
    cache: dict[str, Any] = {}
    entries = []
    for model in models:
        images, labels, data_info = load_split(
            model, args.data, args.data_dir, overrides, args.split, args.limit, cache
        )
        log.info("%s: %d %s images of %s", model.label, len(labels), args.split, data_info["dataset"])
        logits = predict_logits(model, images, args.batch_size)  # [N, C]
        if args.save_logits:
            out_dir.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(out_dir / f"{_slug(model.label)}_logits.npz", logits=logits, labels=labels)
        use_train = args.source_prior == "train" or (args.source_prior == "auto" and model.method == "ce")
        source_prior = prior_from_counts(model.class_counts) if use_train else None
        many, few = model.shot_thresholds(args.many_threshold, args.few_threshold)
        results = evaluate_logits(
            logits,
            labels,
            model.class_counts,
            model.temperature,
            many_threshold=many,
            few_threshold=few,
            em_alpha=args.em_alpha,
            n_bins=args.bins,
            top_k=args.top_confusions,
            shift_kinds=args.shift_kinds,
            shift_factors=args.shift_factors,
            shift_seeds=range(args.seeds),
            source_prior=source_prior,
            class_bias=None if model.class_bias is None else np.asarray(model.class_bias),
        )
        entries.append(
            {
                "label": model.label,
                "method": model.method,
                "source_prior": "train" if use_train else "uniform",
                "source": model.source,
                "class_names": model.class_names,
                "class_counts": model.class_counts,
                **data_info,
                "info": model.info,
                "results": results,
            }
        )
    settings = {
        "em_alpha": args.em_alpha,
        "shift_factors": args.shift_factors,
        "shift_kinds": args.shift_kinds,
        "seeds": args.seeds,
        "bins": args.bins,
        "many_threshold": args.many_threshold,
        "few_threshold": args.few_threshold,
        "source_prior": args.source_prior,
        "split": args.split,
        "limit": args.limit,
    }
    paths = write_report(entries, out_dir, command, settings, embed_images=not args.link_images)
    _log_summary(entries)
    log.info("wrote %s and %s", paths["html"], paths["json"])
    return {"paths": paths, "models": entries, "settings": settings}


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
