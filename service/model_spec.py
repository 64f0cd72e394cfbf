"""A model version's :class:`ModelSpec`: versions found in a Triton-style repository, ``rescom.json`` validated.

```
REPO/NAME/config.pbtxt        Triton's; the service does not need it
REPO/NAME/N/model.onnx
REPO/NAME/N/rescom.json       metadata; written last by export, so its presence marks a complete version
```

Versions follow Triton's rule: numeric folder names not starting with ``0``. This module does not touch ONNX
Runtime; :mod:`service.runtime` opens the graph and checks it against the :class:`ModelSpec` built here.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from rescom.calibration import parse_class_bias, prior_from_counts
from rescom.label_shift import parse_confusion
from rescom.model_repository import METADATA_FILE, MODEL_FORMAT, list_models, list_versions, version_path

__all__ = [
    "ModelSpec",
    "ModelSpecError",
    "TensorSpec",
    "Fingerprint",
    "list_models",
    "list_versions",
    "fingerprint",
    "read_spec",
]

FORMAT = MODEL_FORMAT

Fingerprint = tuple[tuple[str, int, int], ...]


class ModelSpecError(ValueError):
    """A model version cannot be served; the message says which file and field are wrong."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output as declared in ``rescom.json`` (``shape`` includes the batch axis, -1)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelSpec:
    """A validated model version: everything the runtime, the batcher and the routes need to know.

    Attributes:
        name: model name (the folder under the repository).
        version: version number (the numeric folder).
        onnx_path: the graph file.
        input: the image input, ``UINT8 [-1, crop, crop, 3]``.
        output: the logits output, ``FP32 [-1, C]``.
        max_batch_size: the model's own batch limit (the service uses the smaller of it and its setting).
        class_names: ``C`` labels.
        class_counts: ``C`` training counts (the training prior ``π_train = n_c / N``).
        resize: shorter-side resize of :func:`rescom.preprocess.resize_center_crop`.
        crop: centre-crop side, equal to the input's H and W.
        temperature: fitted ``T`` (``None`` when the export had no validation split; 1 is used then).
        default_prior: the prior the metadata asks for when a request names none.
        metrics: test metrics recorded at export (for ``/v1/models``).
        fingerprint: (file, mtime, size) of the version's files, to notice in-place changes.
        metadata: the whole ``rescom.json``.
    """

    name: str
    version: int
    onnx_path: Path
    input: TensorSpec
    output: TensorSpec
    max_batch_size: int
    class_names: tuple[str, ...]
    class_counts: tuple[float, ...]
    resize: int
    crop: int
    temperature: float | None
    default_prior: str
    metrics: Mapping[str, Any] | None
    fingerprint: Fingerprint
    metadata: Mapping[str, Any] = field(repr=False)

    @property
    def num_classes(self) -> int:
        """``C``."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """One preprocessed image: ``(crop, crop, 3)``."""
        return (self.crop, self.crop, 3)

    @property
    def fitted_temperature(self) -> float:
        """``T`` from the metadata, or 1.0 when none was fitted."""
        return 1.0 if self.temperature is None else self.temperature

    @cached_property
    def train_prior(self) -> np.ndarray:
        """``π_train`` ``[C]`` from ``class_counts``."""
        return prior_from_counts(self.class_counts)

    @cached_property
    def class_bias(self) -> np.ndarray | None:
        """Per-class logit bias ``b`` ``[C]`` fitted with ``T`` (``calibration.class_bias``, BCTS).

        Added as ``z / T + b``; ``None`` when the metadata has none or it is all zeros (plain temperature
        scaling).
        """
        calibration = self.metadata.get("calibration") or {}
        return parse_class_bias(calibration.get("class_bias"), self.num_classes)

    @cached_property
    def confusion(self) -> np.ndarray | None:
        """Soft confusion matrix ``M`` ``[C, C]`` of the validation split (``calibration.confusion``).

        The confusion-matrix label-shift estimators (BBSE, RLLS) need it; ``None`` for exports without it.
        """
        calibration = self.metadata.get("calibration") or {}
        return parse_confusion(calibration.get("confusion"), self.num_classes)

    @cached_property
    def val_counts(self) -> tuple[int, ...] | None:
        """Validation images per class behind ``confusion`` (``calibration.val_counts``), or ``None``."""
        calibration = self.metadata.get("calibration") or {}
        return parse_val_counts(calibration.get("val_counts"), self.num_classes)


def fingerprint(repository: Path, name: str, version: int) -> Fingerprint | None:
    """(file, mtime_ns, size) of ``rescom.json`` and the graph; ``None`` while the version is incomplete."""
    vdir = version_path(repository, name, version)
    meta_path = vdir / METADATA_FILE
    try:
        meta_stat = meta_path.stat()
        onnx_file = _onnx_file_name(json.loads(meta_path.read_text()))
        onnx_stat = (vdir / onnx_file).stat()
    except (OSError, ValueError, TypeError, AttributeError, ModelSpecError):
        if not meta_path.exists():
            return None
        # Unreadable metadata is a (refusable) version of its own: fingerprint just the metadata file.
        try:
            st = meta_path.stat()
        except OSError:
            return None
        return ((METADATA_FILE, st.st_mtime_ns, st.st_size),)
    return (
        (METADATA_FILE, meta_stat.st_mtime_ns, meta_stat.st_size),
        (onnx_file, onnx_stat.st_mtime_ns, onnx_stat.st_size),
    )


def read_spec(repository: Path, name: str, version: int, *, verify_hash: bool = True) -> ModelSpec:
    """Read and validate ``repository/name/version/rescom.json`` against docs/architecture.md.

    Raises:
        ModelSpecError: with the file and field at fault (relative to the repository).
    """
    where = f"{name}/{version}/{METADATA_FILE}"
    vdir = version_path(repository, name, version)
    fp = fingerprint(repository, name, version)
    try:
        meta = json.loads((vdir / METADATA_FILE).read_text())
    except FileNotFoundError:
        raise ModelSpecError(f"{where} is missing (every version needs it beside model.onnx)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelSpecError(f"{where} is not readable JSON: {err}") from None
    if not isinstance(meta, dict):
        raise ModelSpecError(f"{where} must hold a JSON object")
    if meta.get("format") != FORMAT:
        raise ModelSpecError(f"{where}: format is {meta.get('format')!r}, this service reads {FORMAT!r}")

    def fail(message: str) -> ModelSpecError:
        return ModelSpecError(f"{where}: {message}")

    class_names = meta.get("class_names")
    if (
        not isinstance(class_names, list)
        or not class_names
        or not all(isinstance(c, str) for c in class_names)
    ):
        raise fail("class_names must be a non-empty list of strings")
    num_classes = len(class_names)
    if len(set(class_names)) != num_classes:
        raise fail("class_names must be unique")
    counts = meta.get("class_counts")
    if not isinstance(counts, list) or len(counts) != num_classes:
        raise fail(f"class_counts must list {num_classes} numbers (one per class name)")
    try:
        prior_from_counts(counts)
    except (ValueError, TypeError) as err:
        raise fail(f"class_counts: {err}") from None

    pre = meta.get("preprocess") or {}
    resize, crop = pre.get("resize"), pre.get("crop")
    if not _is_int(resize) or not _is_int(crop) or not 1 <= crop <= resize:
        raise fail(f"preprocess.resize/crop must be integers with 1 <= crop <= resize, got {resize}/{crop}")
    for key, allowed in (("layout", "NHWC"), ("dtype", "uint8"), ("color", "RGB")):
        if pre.get(key, allowed) != allowed:
            raise fail(f"preprocess.{key} is {pre.get(key)!r}; this service feeds {allowed}")

    inp = _tensor(meta, "inputs", 0, where)
    if inp.datatype != "UINT8" or len(inp.shape) != 4 or inp.shape[1:] != (crop, crop, 3):
        raise fail(
            f"inputs[0] must be UINT8 [-1, {crop}, {crop}, 3] (preprocess.crop), got {inp.datatype} "
            f"{list(inp.shape)}"
        )
    outputs = meta.get("outputs")
    if not isinstance(outputs, list):
        raise fail("outputs must be a list")
    logits_index = next(
        (i for i, o in enumerate(outputs) if isinstance(o, dict) and o.get("name") == "logits"), None
    )
    if logits_index is None:
        raise fail("outputs has no tensor named 'logits'")
    out = _tensor(meta, "outputs", logits_index, where)
    if out.datatype != "FP32" or len(out.shape) != 2 or out.shape[1] != num_classes:
        raise fail(
            f"outputs 'logits' must be FP32 [-1, {num_classes}] (one column per class name), got "
            f"{out.datatype} {list(out.shape)}"
        )

    max_batch = meta.get("max_batch_size")
    if not _is_int(max_batch) or max_batch < 1:
        raise fail(f"max_batch_size must be an integer >= 1, got {max_batch!r}")

    calibration = meta.get("calibration") or {}
    temperature = calibration.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise fail(f"calibration.temperature must be null or a finite number > 0, got {temperature!r}")
    try:
        parse_class_bias(calibration.get("class_bias"), num_classes)
        parse_confusion(calibration.get("confusion"), num_classes)
        parse_val_counts(calibration.get("val_counts"), num_classes)
    except ValueError as err:
        raise fail(f"calibration.{err}") from None
    default_prior = calibration.get("prior", "uniform")
    if default_prior not in ("uniform", "train", "adaptive"):
        raise fail(f"calibration.prior must be uniform, train or adaptive, got {default_prior!r}")

    try:
        onnx_file = _onnx_file_name(meta)
    except ModelSpecError as err:
        raise fail(str(err)) from None
    onnx_path = vdir / onnx_file
    if not onnx_path.is_file():
        raise fail(f"the graph file {onnx_file!r} is missing")
    expected = (meta.get("onnx") or {}).get("sha256")
    if verify_hash and expected:
        digest = _sha256(onnx_path)
        if digest != expected:
            raise fail(f"{onnx_file} does not match onnx.sha256 (file changed or only partly copied)")

    if meta.get("name") not in (None, name):
        # Triton requires the config name to match the folder; we only need to know which one we serve.
        raise fail(f"name is {meta.get('name')!r} but the model folder is {name!r}")
    if fp is None:
        raise fail("the version is incomplete")
    return ModelSpec(
        name=name,
        version=version,
        onnx_path=onnx_path,
        input=inp,
        output=out,
        max_batch_size=int(max_batch),
        class_names=tuple(class_names),
        class_counts=tuple(float(c) for c in counts),
        resize=int(resize),
        crop=int(crop),
        temperature=None if temperature is None else float(temperature),
        default_prior=default_prior,
        metrics=meta.get("metrics") if isinstance(meta.get("metrics"), dict) else None,
        fingerprint=fp,
        metadata=meta,
    )


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _tensor(meta: Mapping[str, Any], key: str, index: int, where: str) -> TensorSpec:
    items = meta.get(key)
    if not isinstance(items, list) or len(items) <= index or not isinstance(items[index], dict):
        raise ModelSpecError(f"{where}: {key}[{index}] is missing")
    t = items[index]
    shape = t.get("shape")
    if (
        not isinstance(t.get("name"), str)
        or not isinstance(t.get("datatype"), str)
        or not isinstance(shape, list)
        or not all(_is_int(d) for d in shape)
    ):
        raise ModelSpecError(f"{where}: {key}[{index}] needs a name, a datatype and an integer shape")
    if not shape or shape[0] != -1:
        raise ModelSpecError(
            f"{where}: {key}[{index}] must have a dynamic batch axis (-1 first), got {shape}"
        )
    return TensorSpec(t["name"], t["datatype"], tuple(shape))


def _onnx_file_name(meta: Mapping[str, Any]) -> str:
    file = (meta.get("onnx") or {}).get("file", "model.onnx")
    if not isinstance(file, str) or not file or "/" in file or "\\" in file or file.startswith("."):
        raise ModelSpecError(f"onnx.file must be a plain file name in the version folder, got {file!r}")
    return file


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_val_counts(value: object, num_classes: int) -> tuple[int, ...] | None:
    """Validate ``calibration.val_counts`` (``C`` integers >= 0); ``None`` passes."""
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != num_classes
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    ):
        raise ValueError(f"val_counts must be {num_classes} integers >= 0")
    return tuple(value)
