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
from rescom.calibration import fit_temperature
from rescom.checkpoint import load_checkpoint
from rescom.models import create_model

__all__ = ["ExportResult", "export_checkpoint", "load_model_from_checkpoint", "split_images"]

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
) -> ExportResult:
    """Export ``checkpoint`` to ``repository/name/version`` (next free version when ``None``).

    Writes ``model.onnx`` (self-contained), ``rescom.json`` (also embedded in the ONNX ``metadata_props``
    under ``"rescom"``), ``../config.pbtxt`` and ``../labels.txt``. With ``verify`` (the default) it runs
    ``onnx.checker`` and compares ONNX Runtime with PyTorch on real validation images at several batch
    sizes (max |Δlogit| ≤ 1e-4 and identical argmax; 5e-2 for ``fp16``). On failure the new version folder is
    removed and the error is raised.
    """
    state = load_checkpoint(checkpoint)
    meta = state["meta"]
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
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
        temperature = meta.get("temperature")
        if temperature is None and val is not None:
            temperature = fit_temperature(_logits(module, val[0]), val[1])
            log.info("fitted temperature T = %.4f on %d validation images", temperature, len(val[1]))
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
            "calibration": {"temperature": temperature, "prior": "uniform"},
            "architecture": {
                "arch": meta["arch"],
                "arch_kwargs": meta.get("arch_kwargs") or {},
                "feat_dim": meta["feat_dim"],
                "num_classes": num_classes,
            },
            "method": meta["method"],
            "dataset": meta["dataset"],
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
