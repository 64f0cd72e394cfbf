"""Promotion gate: a new version goes live only if it is not worse than the one served (numpy + onnxruntime).

Both the candidate and the served version are scored on the same held-out split with the serving rule
(calibrated, uniform prior: ``argmax softmax(z / T + b)``). The candidate is *staged* (written but excluded by a
``specific`` version policy) when its mean per-class accuracy (``balanced_acc``) is lower than the served
version's by more than ``tolerance`` points, or when its temperature ``T`` sits at the bound of the fit (the
model is untrained or degenerate: e.g. T = 20 after 2 epochs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rescom import model_repository as mr
from rescom.calibration import calibrate_logits, parse_class_bias
from rescom.metrics import longtail_metrics

__all__ = [
    "DEFAULT_TOLERANCE",
    "TEMPERATURE_BOUNDS",
    "GateResult",
    "accuracy_figures",
    "decide",
    "served_baseline",
    "version_logits",
]

DEFAULT_TOLERANCE = 1.0  # points of balanced_acc (mean per-class accuracy, percent)
TEMPERATURE_BOUNDS = (0.05, 20.0)  # the bounds of rescom.calibration's fits


def _figures(predictions: np.ndarray, labels: np.ndarray, counts: Sequence[float], many: int, few: int):
    m = longtail_metrics(predictions, labels, counts, many, few)
    per_class = [v for v in m["per_class_acc"] if v is not None]  # type: ignore[union-attr]
    return {
        "top1": m["acc"],
        "balanced_acc": float(np.mean(per_class)) if per_class else None,
        "many": m["many"],
        "medium": m["medium"],
        "few": m["few"],
    }


def accuracy_figures(
    logits: np.ndarray,
    labels: np.ndarray,
    class_counts: Sequence[float],
    temperature: float | None,
    class_bias: Any,
    thresholds: Mapping[str, int],
    split: str = "test",
) -> dict[str, Any]:
    """The ``metrics`` block of ``rescom.json``: raw argmax and served (calibrated, uniform prior) figures.

    Args:
        logits: raw logits z ``[N, C]``.
        labels: ``[N]``.
        class_counts: training counts (π_train, and the Many/Medium/Few groups).
        temperature: ``T`` (``None`` = 1).
        class_bias: ``b`` ``[C]`` or ``None``.
        thresholds: ``{"many": int, "few": int}`` (Many-shot n > many, Few-shot n < few).
        split: the split the images come from.

    Returns:
        ``{"split", "num_images", "thresholds", "raw": {...}, "served": {...}}``, each with ``top1``,
        ``balanced_acc``, ``many``, ``medium``, ``few`` in percent.
    """
    many, few = int(thresholds["many"]), int(thresholds["few"])
    bias = parse_class_bias(class_bias, logits.shape[1])
    served = calibrate_logits(logits, temperature or 1.0, bias).argmax(axis=1)  # [N]
    return {
        "split": split,
        "num_images": int(len(labels)),
        "thresholds": {"many": many, "few": few},
        "raw": _figures(logits.argmax(axis=1), labels, class_counts, many, few),
        "served": {
            **_figures(served, labels, class_counts, many, few),
            "prior": "uniform",
            "calibrated": True,
        },
    }


def version_logits(repository: str | Path, name: str, version: int, images: np.ndarray) -> np.ndarray:
    """Raw logits ``[N, C]`` of an exported version on uint8 images ``[N, H, W, 3]`` (ONNX Runtime, CPU)."""
    import onnxruntime as ort

    meta = mr.read_metadata(repository, name, version)
    graph = mr.version_path(repository, name, version) / (meta.get("onnx") or {}).get("file", "model.onnx")
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    return np.concatenate(
        [session.run(["logits"], {"images": images[i : i + 256]})[0] for i in range(0, len(images), 256)]
    )


def served_baseline(repository: str | Path, name: str, exclude: int) -> int | None:
    """The version that unversioned requests reach now (the highest one the policy serves), or ``None``."""
    config = mr.read_config(repository, name)
    policy = config.version_policy if config is not None else mr.VersionPolicy()
    complete = [v for v in mr.list_versions(repository, name, complete=True) if v != exclude]
    selected = policy.select(complete)
    return selected[0] if selected else None


@dataclass
class GateResult:
    """What the gate decided and why.

    Attributes:
        passed: the candidate may be served.
        reasons: why it is staged (empty when it passed).
        baseline_version: the served version it was compared with (``None`` for a first version).
        candidate: served ``balanced_acc`` of the candidate.
        baseline: served ``balanced_acc`` of the baseline on the same split.
        tolerance: allowed drop in points.
        warnings: problems that do not stage the version (a first version is served whatever its figures:
            there is nothing else to serve).
    """

    passed: bool
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    baseline_version: int | None = None
    candidate: float | None = None
    baseline: float | None = None
    tolerance: float = DEFAULT_TOLERANCE

    def to_json(self) -> dict[str, Any]:
        """The ``promotion.gate`` block of ``rescom.json``."""
        return {
            "passed": self.passed,
            "reasons": self.reasons,
            "warnings": self.warnings,
            "metric": "served balanced_acc",
            "candidate": self.candidate,
            "baseline_version": self.baseline_version,
            "baseline": self.baseline,
            "tolerance": self.tolerance,
        }


def decide(
    candidate: Mapping[str, Any] | None,
    baseline: Mapping[str, Any] | None,
    baseline_version: int | None,
    temperature: float | None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> GateResult:
    """Apply the gate to the served figures of the candidate and of the served version (same split).

    Args:
        candidate: the candidate's :func:`accuracy_figures` (``None`` when no held-out split was available).
        baseline: the served version's figures (``None`` when nothing is served yet).
        baseline_version: its number.
        temperature: the candidate's fitted ``T``.
        tolerance: largest allowed drop of served ``balanced_acc``, in points.
    """
    result = GateResult(True, baseline_version=baseline_version, tolerance=tolerance)
    if temperature is not None and any(abs(temperature - b) <= 1e-6 * b for b in TEMPERATURE_BOUNDS):
        result.reasons.append(f"its temperature T = {temperature:g} hit the bound of the fit")
    if candidate is None:
        if baseline_version is not None:
            result.reasons.append("no held-out split was available to compare it with the served version")
    else:
        result.candidate = candidate["served"]["balanced_acc"]
        if baseline is not None:
            result.baseline = baseline["served"]["balanced_acc"]
            if result.candidate < result.baseline - tolerance:
                result.reasons.append(
                    f"balanced_acc {result.candidate:.2f} % is below version {baseline_version}'s "
                    f"{result.baseline:.2f} % by more than {tolerance:g} points"
                )
    if baseline_version is None:  # nothing is served: staging would leave the model without any version
        result.warnings, result.reasons = result.reasons, []
    result.passed = not result.reasons
    return result
