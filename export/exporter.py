"""Checkpoint → model repository version: graph, metadata, Triton config, verification."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from export.gate import (
    DEFAULT_TOLERANCE,
    GateResult,
    accuracy_figures,
    decide,
    served_baseline,
    version_logits,
)
from export.graph import DEFAULT_OPSET, ExportModule, export_onnx
from export.promote import stage_version
from export.repository import version_dir
from export.verify import ParityResult, check_onnx, check_parity
from rescom import __version__
from rescom import model_repository as mr
from rescom.calibration import fit_bias_corrected_temperature, fit_temperature
from rescom.checkpoint import load_checkpoint, model_from_checkpoint
from rescom.label_shift import soft_confusion

__all__ = [
    "CALIBRATION_METHODS",
    "DEFAULT_BIAS_PRIOR_STD",
    "ExportResult",
    "export_checkpoint",
    "fit_calibration",
    "split_images",
]

CALIBRATION_METHODS = ("bcts", "temperature")
# σ of the Gaussian prior N(0, σ²) on each class bias b_c (logit units) in BCTS: 5-fold cross-validated NLL on
# the digits-LT validation split preferred σ = 1 over 0.25, 0.5, 2, 4 and no penalty (two independently
# trained models); the penalty is on the summed NLL, so larger validation splits override it.
DEFAULT_BIAS_PRIOR_STD = 1.0
DEFAULT_MAX_BATCH_SIZE = 64  # config.pbtxt's max_batch_size when export creates it

log = logging.getLogger("rescom.export")


@dataclass
class ExportResult:
    """Where the export went and what its checks measured."""

    version_dir: Path
    onnx_path: Path
    metadata: dict[str, Any]
    parity: ParityResult | None
    gate: GateResult | None = None

    @property
    def staged(self) -> bool:
        """The version was written but is not served (the promotion gate held it back)."""
        return self.gate is not None and not self.gate.passed


def split_images(
    state: dict[str, Any], split: str, data_dir: str | None, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Real images of the checkpoint's dataset split as uint8 ``[N, crop, crop, 3]`` plus labels ``[N]``.

    Uses exactly the serving preprocessing. Returns ``None`` when the dataset cannot be found (e.g. exporting
    on a machine without the data); the caller then falls back and says so.
    """
    from rescom.data import build_datasets
    from rescom.data.arrays import split_arrays

    meta, cfg = state["meta"], state.get("config") or {}
    root = data_dir if data_dir is not None else (cfg.get("data") or {}).get("dir")
    try:
        splits = build_datasets(meta["dataset"], root, **(meta.get("dataset_kwargs") or {}))
    except (FileNotFoundError, OSError, ValueError) as err:
        log.warning("could not load dataset %r from %r (%s)", meta["dataset"], root, err)
        return None
    return split_arrays(splits, split, limit)


def fit_calibration(
    val_logits: np.ndarray | None,
    val_labels: np.ndarray | None,
    num_classes: int,
    checkpoint_temperature: float | None,
    method: str = "bcts",
    bias_prior_std: float = DEFAULT_BIAS_PRIOR_STD,
) -> dict[str, Any]:
    """The ``calibration`` block of ``rescom.json`` (without ``prior``): ``T`` and the class bias ``b``.

    - ``"bcts"``: ``T`` and ``b`` fitted jointly by NLL of ``softmax(z / T + b)`` on the validation logits
      (:func:`rescom.calibration.fit_bias_corrected_temperature`, Gaussian prior ``σ = bias_prior_std``).
    - ``"temperature"``: ``b = 0``; ``T`` from the checkpoint (fitted by training on the same split) or, when
      it has none, by :func:`rescom.calibration.fit_temperature`.

    Without validation logits both fall back to the checkpoint's ``T`` (``None`` when it has none) and ``b = 0``.

    With validation logits it also records what the confusion-matrix label-shift estimators need
    (:mod:`rescom.label_shift`): ``confusion``, the soft confusion matrix ``M[i, j] = mean_{x: y=j}
    softmax(z / T + b)_i`` ``[C, C]``, and ``val_counts``, the validation images per class.

    Returns:
        ``{"method", "temperature", "class_bias" [C], "bias_prior_std", "fitted_on"}`` (+ ``"confusion"``,
        ``"val_counts"`` with validation logits).
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(
            f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}"
        )
    bias = np.zeros(num_classes)
    temperature = checkpoint_temperature
    fitted_on = "checkpoint" if temperature is not None else None
    if val_logits is not None and val_labels is not None:
        if method == "bcts":
            temperature, bias = fit_bias_corrected_temperature(val_logits, val_labels, bias_prior_std)
            fitted_on = "val"
        elif temperature is None:
            temperature, fitted_on = fit_temperature(val_logits, val_labels), "val"
    elif method == "bcts":
        log.warning("no validation split: class_bias is 0 (plain temperature scaling)")
    block: dict[str, Any] = {
        "method": method if val_logits is not None else "temperature",
        "temperature": None if temperature is None else float(temperature),
        "class_bias": [float(v) for v in bias],
        "bias_prior_std": float(bias_prior_std) if method == "bcts" and val_logits is not None else None,
        "fitted_on": fitted_on,
    }
    if val_logits is not None and val_labels is not None:
        t = 1.0 if temperature is None else float(temperature)
        confusion = soft_confusion(val_logits, val_labels, num_classes, t, bias)  # [C, C]
        block["confusion"] = [[round(float(v), 6) for v in row] for row in confusion]
        block["val_counts"] = [int(n) for n in np.bincount(val_labels, minlength=num_classes)]
    return block


def _logits(module: ExportModule, images: np.ndarray, batch: int = 256) -> np.ndarray:
    with torch.no_grad():
        parts = [module(torch.from_numpy(images[i : i + batch])) for i in range(0, len(images), batch)]
    return torch.cat([p[0] if isinstance(p, tuple) else p for p in parts]).numpy()


def export_checkpoint(
    checkpoint: str | Path,
    repository: str | Path,
    name: str,
    version: int | None = None,
    *,
    force: bool = False,
    with_features: bool = False,
    fp16: bool = False,
    data_dir: str | None = None,
    max_batch_size: int | None = None,
    max_queue_delay_us: int = 2000,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    tolerance: float | None = None,
    command: str | None = None,
    calibration: str = "bcts",
    bias_prior_std: float = DEFAULT_BIAS_PRIOR_STD,
    gate: bool = True,
    gate_tolerance: float = DEFAULT_TOLERANCE,
) -> ExportResult:
    """Export ``checkpoint`` to ``repository/name/version`` (next free version when ``None``).

    Writes ``model.onnx`` (self-contained) and, last, ``rescom.json`` (also embedded in the ONNX
    ``metadata_props`` under ``"rescom"``). ``../config.pbtxt`` is created once; afterwards only the fields
    export owns (``name``, ``platform``, ``input``, ``output``, and ``max_batch_size`` when given) are rewritten
    and every other line, comments included, is kept. ``../labels.txt`` is written once; class names that
    differ from the model's existing ones are refused unless ``force``.

    With ``verify`` (the default) it runs ``onnx.checker`` and compares ONNX Runtime with PyTorch on real
    validation images at several batch sizes (max |Δlogit| ≤ 1e-4 and identical argmax; 5e-2 for ``fp16``).
    With ``gate`` (the default) the candidate and the served version are scored on the test split
    (:mod:`export.gate`); a candidate that fails is written *staged*: the version policy is pinned to what is
    served now, so the service never picks it up. On failure the new version folder is removed and the error
    is raised.

    ``calibration`` (``"bcts"`` or ``"temperature"``) chooses how ``calibration.temperature`` ``T`` and
    ``calibration.class_bias`` ``b`` are fitted on the validation split (:func:`fit_calibration`).
    """
    state = load_checkpoint(checkpoint)
    meta = state["meta"]
    if max_batch_size is not None and max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    if calibration not in CALIBRATION_METHODS:
        raise ValueError(f"calibration must be one of {', '.join(CALIBRATION_METHODS)}, got {calibration!r}")
    mr.check_model_name(name)
    _check_class_names(repository, name, list(meta["class_names"]), force)
    module = ExportModule(
        model_from_checkpoint(state), meta["mean"], meta["std"], with_features=with_features, half=fp16
    )
    if fp16:
        module.net.half()
    if version is None:
        version = mr.next_version(repository, name)
    existed = mr.version_path(repository, name, version).exists()
    out_dir = version_dir(repository, name, version, force=force)
    try:
        onnx_path = out_dir / "model.onnx"
        export_onnx(module, onnx_path, meta["crop"], opset=opset)
        val = split_images(state, "val", data_dir)
        calib = _calibrate(module, meta, val, calibration, bias_prior_std)
        parity = _verify(onnx_path, module, meta, val, fp16, tolerance) if verify else None
        figures = _test_figures(module, state, data_dir, calib)
        gate_result = (
            _run_gate(repository, name, version, state, data_dir, figures, calib, gate_tolerance)
            if gate
            else None
        )
        config_mbs = _write_config(repository, name, meta, with_features, max_batch_size, max_queue_delay_us)
        metadata = _metadata(
            name, version, meta, with_features, config_mbs, calib, figures, parity, opset, fp16, command
        )
        if gate_result is not None:
            metadata["promotion"] = {
                "status": "live" if gate_result.passed else "staged",
                "gate": gate_result.to_json(),
            }
        _embed_metadata(onnx_path, metadata)
        if gate_result is not None and not gate_result.passed:
            stage_version(repository, name, version)  # before rescom.json: the service must never see it live
        mr.write_metadata(out_dir, metadata)
        if mr.read_labels(repository, name) != list(meta["class_names"]):
            mr.write_labels(repository, name, meta["class_names"])
    except BaseException:
        if not existed:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return ExportResult(out_dir, onnx_path, metadata, parity, gate_result)


def _check_class_names(repository: str | Path, name: str, class_names: list[str], force: bool) -> None:
    """Refuse class names that differ from ``labels.txt`` (shared by every version) unless ``force``."""
    existing = mr.read_labels(repository, name)
    if existing is None or existing == class_names or force:
        return
    raise ValueError(
        f"{name}/{mr.LABELS_FILE} lists {len(existing)} classes {existing[:5]}... but the checkpoint has "
        f"{len(class_names)} {class_names[:5]}...; every version of a model shares one labels file: export "
        "under a new --name, or pass --force to rewrite the labels"
    )


def _calibrate(
    module: ExportModule,
    meta: dict[str, Any],
    val: tuple[np.ndarray, np.ndarray] | None,
    method: str,
    bias_prior_std: float,
) -> dict[str, Any]:
    needs_logits = val is not None and (method == "bcts" or meta.get("temperature") is None)
    val_logits = _logits(module, val[0]).astype(np.float64) if needs_logits else None
    calib = fit_calibration(
        val_logits,
        None if val is None else val[1],
        meta["num_classes"],
        meta.get("temperature"),
        method,
        bias_prior_std,
    )
    if calib["fitted_on"] == "val":
        log.info(
            "calibration %s fitted on %d validation images: T = %.4f, class bias b = %s",
            calib["method"],
            len(val[1]),
            calib["temperature"],
            np.round(calib["class_bias"], 3).tolist(),
        )
    return calib


def _verify(
    onnx_path: Path,
    module: ExportModule,
    meta: dict[str, Any],
    val: tuple[np.ndarray, np.ndarray] | None,
    fp16: bool,
    tolerance: float | None,
) -> ParityResult:
    check_onnx(onnx_path)
    if val is not None:
        images = val[0][:64]
    else:
        log.warning("no validation images available: parity is checked on random uint8 images instead")
        images = np.random.default_rng(0).integers(0, 256, (64, meta["crop"], meta["crop"], 3), np.uint8)
    parity = check_parity(
        onnx_path, module, images, tolerance=tolerance if tolerance is not None else (5e-2 if fp16 else 1e-4)
    )
    log.info("%s", parity.summary())
    return parity


def _thresholds(state: dict[str, Any]) -> dict[str, int]:
    """Many/Few thresholds of the training recipe (``eval.many_threshold`` / ``few_threshold``)."""
    evaluation = (state.get("config") or {}).get("eval") or {}
    return {
        "many": int(evaluation.get("many_threshold", 100)),
        "few": int(evaluation.get("few_threshold", 20)),
    }


def _test_figures(
    module: ExportModule, state: dict[str, Any], data_dir: str | None, calib: dict[str, Any]
) -> dict[str, Any] | None:
    """Raw and served figures on the test split (``None`` when the split cannot be loaded)."""
    test = split_images(state, "test", data_dir)
    if test is None:
        return None
    logits = _logits(module, test[0]).astype(np.float64)  # [N, C]
    return accuracy_figures(
        logits,
        test[1],
        state["meta"]["class_counts"],
        calib["temperature"],
        calib["class_bias"],
        _thresholds(state),
    )


def _run_gate(
    repository: str | Path,
    name: str,
    version: int,
    state: dict[str, Any],
    data_dir: str | None,
    figures: dict[str, Any] | None,
    calib: dict[str, Any],
    tolerance: float,
) -> GateResult:
    """Score the served version on the same test split and decide (:func:`export.gate.decide`)."""
    baseline_version = served_baseline(repository, name, exclude=version)
    baseline = None
    if baseline_version is not None and figures is not None:
        base_meta = mr.read_metadata(repository, name, baseline_version)
        test = split_images(state, "test", data_dir)
        if test is not None and len(base_meta.get("class_names") or []) == state["meta"]["num_classes"]:
            base_cal = base_meta.get("calibration") or {}
            baseline = accuracy_figures(
                version_logits(repository, name, baseline_version, test[0]).astype(np.float64),
                test[1],
                base_meta["class_counts"],
                base_cal.get("temperature"),
                base_cal.get("class_bias"),
                figures["thresholds"],
            )
    result = decide(figures, baseline, baseline_version, calib["temperature"], tolerance)
    against = (
        "no version served yet"
        if baseline_version is None
        else f"version {baseline_version}: {_percent(result.baseline)}"
    )
    log.info(
        "promotion gate: %s (served balanced_acc %s vs %s)",
        "passed" if result.passed else "failed: " + "; ".join(result.reasons),
        _percent(result.candidate),
        against,
    )
    return result


def _write_config(
    repository: str | Path,
    name: str,
    meta: dict[str, Any],
    with_features: bool,
    max_batch_size: int | None,
    max_queue_delay_us: int,
) -> int:
    """Create ``config.pbtxt`` once, or update only the fields export owns; returns its ``max_batch_size``."""
    inputs, outputs = _tensors(meta, with_features)
    path = mr.config_path(repository, name)
    if not path.is_file():
        mbs = max_batch_size or DEFAULT_MAX_BATCH_SIZE
        mr.write_text_atomic(path, mr.render_config(name, inputs, outputs, mbs, max_queue_delay_us))
        return mbs
    text = path.read_text()
    owned = mr.render_owned_fields(name, inputs, outputs)
    replacements = {
        "name": owned.split("\n", 1)[0],
        "platform": 'platform: "onnxruntime_onnx"',
        "input": owned[owned.index("input [") : owned.index("output [")],
        "output": owned[owned.index("output [") :],
    }
    if max_batch_size is not None:
        replacements["max_batch_size"] = f"max_batch_size: {max_batch_size}"
    updated = mr.update_config_text(text, replacements)
    if updated != text:
        mr.write_text_atomic(path, updated)
    config = mr.parse_config(updated, where=str(path))
    return config.max_batch_size or max_batch_size or DEFAULT_MAX_BATCH_SIZE


def _tensors(meta: dict[str, Any], with_features: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    inputs = [{"name": "images", "datatype": "UINT8", "shape": [-1, meta["crop"], meta["crop"], 3]}]
    outputs = [{"name": "logits", "datatype": "FP32", "shape": [-1, meta["num_classes"]]}]
    if with_features:
        outputs.append({"name": "features", "datatype": "FP32", "shape": [-1, meta["feat_dim"]]})
    return inputs, outputs


def _metadata(
    name: str,
    version: int,
    meta: dict[str, Any],
    with_features: bool,
    max_batch_size: int,
    calib: dict[str, Any],
    figures: dict[str, Any] | None,
    parity: ParityResult | None,
    opset: int,
    fp16: bool,
    command: str | None,
) -> dict[str, Any]:
    """``rescom.json`` (docs/architecture.md, docs/model-lifecycle.md), without ``onnx.sha256`` (set once the graph is final)."""
    inputs, outputs = _tensors(meta, with_features)
    return {
        "format": mr.MODEL_FORMAT,
        "name": name,
        "version": version,
        "inputs": inputs,
        "outputs": outputs,
        "max_batch_size": max_batch_size,
        "class_names": list(meta["class_names"]),
        "class_counts": list(meta["class_counts"]),
        "preprocess": {
            "resize": meta["resize"],
            "crop": meta["crop"],
            "interpolation": "bilinear",
            "color": "RGB",
            "layout": "NHWC",
            "dtype": "uint8",
            "mean": list(meta["mean"]),
            "std": list(meta["std"]),
        },
        "calibration": {**calib, "prior": "uniform"},
        "architecture": {
            "arch": meta["arch"],
            "arch_kwargs": meta.get("arch_kwargs") or {},
            "feat_dim": meta["feat_dim"],
            "num_classes": meta["num_classes"],
        },
        "method": meta["method"],
        "dataset": meta["dataset"],
        "dataset_kwargs": dict(meta.get("dataset_kwargs") or {}),
        "metrics": figures if figures is not None else meta.get("metrics"),
        "onnx": {"file": "model.onnx", "opset": opset, "sha256": None, "fp16": fp16},
        "parity": None
        if parity is None
        else {
            "max_abs_diff": parity.max_abs_diff,
            "argmax_identical": parity.argmax_agree,
            "tolerance": parity.tolerance,
            "allowed_abs_diff": parity.allowed,
        },
        "rescom_version": __version__,
        "export_command": command,
        "created_utc": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
    }


def _embed_metadata(onnx_path: Path, metadata: dict[str, Any]) -> None:
    """Embed the metadata (without the hash and the timestamp) in the graph, then record the graph's hash."""
    proto = onnx.load(str(onnx_path))
    del proto.metadata_props[:]
    # The timestamp stays out of the graph so that re-exporting the same checkpoint gives identical bytes.
    embedded = {k: v for k, v in metadata.items() if k != "created_utc"}
    proto.metadata_props.add(key="rescom", value=json.dumps(embedded))
    proto.producer_name = "rescom"
    proto.producer_version = __version__
    onnx.save(proto, str(onnx_path))
    metadata["onnx"]["sha256"] = hashlib.sha256(onnx_path.read_bytes()).hexdigest()


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} %"
