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

from export.graph import DEFAULT_OPSET, ExportModule, export_onnx
from export.repository import next_version, render_config_pbtxt, version_dir, write_metadata
from export.verify import ParityResult, check_onnx, check_parity
from rescom import __version__
from rescom.calibration import fit_bias_corrected_temperature, fit_temperature
from rescom.checkpoint import load_checkpoint
from rescom.models import create_model

__all__ = [
    "CALIBRATION_METHODS",
    "DEFAULT_BIAS_PRIOR_STD",
    "ExportResult",
    "export_checkpoint",
    "fit_calibration",
    "load_model_from_checkpoint",
    "split_images",
]

CALIBRATION_METHODS = ("bcts", "temperature")
# σ of the Gaussian prior N(0, σ²) on each class bias b_c (logit units) in BCTS: 5-fold cross-validated NLL on
# the digits-LT validation split preferred σ = 1 over 0.25, 0.5, 2, 4 and no penalty (two independently
# trained models); the penalty is on the summed NLL, so larger validation splits override it.
DEFAULT_BIAS_PRIOR_STD = 1.0

log = logging.getLogger("rescom.export")


@dataclass
class ExportResult:
    """Where the export went and what its checks measured."""

    version_dir: Path
    onnx_path: Path
    metadata: dict[str, Any]
    parity: ParityResult | None


def load_model_from_checkpoint(state: dict[str, Any]) -> torch.nn.Module:
    """Rebuild the ResCom model of a checkpoint from its ``meta`` and load the weights (eval mode)."""
    meta = state["meta"]
    model = create_model(
        meta["arch"],
        num_classes=meta["num_classes"],
        proj_dim=meta["proj_dim"],
        **(meta.get("arch_kwargs") or {}),
    )
    model.load_state_dict(state["model"])
    return model.eval()


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

    Returns:
        ``{"method", "temperature", "class_bias" [C], "bias_prior_std", "fitted_on"}``.
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
    return {
        "method": method if val_logits is not None else "temperature",
        "temperature": None if temperature is None else float(temperature),
        "class_bias": [float(v) for v in bias],
        "bias_prior_std": float(bias_prior_std) if method == "bcts" and val_logits is not None else None,
        "fitted_on": fitted_on,
    }


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
    max_batch_size: int = 64,
    max_queue_delay_us: int = 2000,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    tolerance: float | None = None,
    command: str | None = None,
    calibration: str = "bcts",
    bias_prior_std: float = DEFAULT_BIAS_PRIOR_STD,
) -> ExportResult:
    """Export ``checkpoint`` to ``repository/name/version`` (next free version when ``None``).

    Writes ``model.onnx`` (self-contained), ``rescom.json`` (also embedded in the ONNX ``metadata_props``
    under ``"rescom"``), ``../config.pbtxt`` and ``../labels.txt``. With ``verify`` (the default) it runs
    ``onnx.checker`` and compares ONNX Runtime with PyTorch on real validation images at several batch
    sizes (max |Δlogit| ≤ 1e-4 and identical argmax; 5e-2 for ``fp16``). On failure the new version folder is
    removed and the error is raised.

    ``calibration`` (``"bcts"`` or ``"temperature"``) chooses how ``calibration.temperature`` ``T`` and
    ``calibration.class_bias`` ``b`` are fitted on the validation split (:func:`fit_calibration`).
    """
    state = load_checkpoint(checkpoint)
    meta = state["meta"]
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    if calibration not in CALIBRATION_METHODS:
        raise ValueError(f"calibration must be one of {', '.join(CALIBRATION_METHODS)}, got {calibration!r}")
    model = load_model_from_checkpoint(state)
    module = ExportModule(model, meta["mean"], meta["std"], with_features=with_features, half=fp16)
    if fp16:
        module.net.half()
    if version is None:
        version = next_version(repository, name)
    existed = (Path(repository) / name / str(version)).exists()
    out_dir = version_dir(repository, name, version, force=force)
    try:
        onnx_path = out_dir / "model.onnx"
        export_onnx(module, onnx_path, meta["crop"], opset=opset)
        val = split_images(state, "val", data_dir)
        needs_logits = val is not None and (calibration == "bcts" or meta.get("temperature") is None)
        val_logits = _logits(module, val[0]).astype(np.float64) if needs_logits else None
        calib = fit_calibration(
            val_logits,
            None if val is None else val[1],
            meta["num_classes"],
            meta.get("temperature"),
            calibration,
            bias_prior_std,
        )
        temperature = calib["temperature"]
        if calib["fitted_on"] == "val":
            log.info(
                "calibration %s fitted on %d validation images: T = %.4f, class bias b = %s",
                calib["method"],
                len(val[1]),
                temperature,
                np.round(calib["class_bias"], 3).tolist(),
            )
        parity = None
        if verify:
            check_onnx(onnx_path)
            if val is not None:
                images = val[0][:64]
            else:
                log.warning(
                    "no validation images available: parity is checked on random uint8 images instead"
                )
                images = np.random.default_rng(0).integers(
                    0, 256, (64, meta["crop"], meta["crop"], 3), np.uint8
                )
            parity = check_parity(
                onnx_path,
                module,
                images,
                tolerance=tolerance if tolerance is not None else (5e-2 if fp16 else 1e-4),
            )
            log.info("%s", parity.summary())
        num_classes = meta["num_classes"]
        outputs = [{"name": "logits", "datatype": "FP32", "shape": [-1, num_classes]}]
        if with_features:
            outputs.append({"name": "features", "datatype": "FP32", "shape": [-1, meta["feat_dim"]]})
        inputs = [{"name": "images", "datatype": "UINT8", "shape": [-1, meta["crop"], meta["crop"], 3]}]
        metadata: dict[str, Any] = {
            "format": "rescom-model/1",
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
                "num_classes": num_classes,
            },
            "method": meta["method"],
            "dataset": meta["dataset"],
            "dataset_kwargs": dict(meta.get("dataset_kwargs") or {}),
            "metrics": meta.get("metrics"),
            "onnx": {"file": "model.onnx", "opset": opset, "sha256": None, "fp16": fp16},
            "parity": None
            if parity is None
            else {
                "max_abs_diff": parity.max_abs_diff,
                "argmax_identical": parity.argmax_agree,
                "tolerance": parity.tolerance,
            },
            "rescom_version": __version__,
            "export_command": command,
            "created_utc": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        }
        # Embed the metadata (without the hash, which would change the file it describes) in the ONNX file.
        proto = onnx.load(str(onnx_path))
        del proto.metadata_props[:]
        # The timestamp stays out of the graph so that re-exporting the same checkpoint gives identical bytes.
        embedded = {k: v for k, v in metadata.items() if k != "created_utc"}
        proto.metadata_props.add(key="rescom", value=json.dumps(embedded))
        proto.producer_name = "rescom"
        proto.producer_version = __version__
        onnx.save(proto, str(onnx_path))
        metadata["onnx"]["sha256"] = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
        write_metadata(out_dir / "rescom.json", metadata)
        model_dir = out_dir.parent
        (model_dir / "config.pbtxt").write_text(
            render_config_pbtxt(name, inputs, outputs, max_batch_size, max_queue_delay_us)
        )
        (model_dir / "labels.txt").write_text("\n".join(meta["class_names"]) + "\n")
    except BaseException:
        if not existed:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return ExportResult(out_dir, onnx_path, metadata, parity)
