"""PNG figures of the evaluation report (matplotlib, Agg backend: no display needed).

Every function takes the plain values of :func:`rescom.evaluation.report.evaluate_logits` (so figures can be
redrawn from ``report.json``), writes one PNG and returns its path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

from rescom.evaluation.report import PRIORS, SHIFT_METHODS  # noqa: E402

__all__ = [
    "plot_per_class_accuracy",
    "plot_reliability",
    "plot_confusions",
    "plot_label_shift",
    "plot_label_shift_comparison",
]

DPI = 110
COLORS = {"uniform": "tab:blue", "train": "tab:orange", "adaptive": "tab:green", "oracle": "tab:gray"}


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_per_class_accuracy(
    per_class_acc: Sequence[float | None],
    class_counts: Sequence[int],
    path: str | Path,
    many_threshold: int = 100,
    few_threshold: int = 20,
    title: str = "",
    class_names: Sequence[str] | None = None,
) -> Path:
    """Per-class test accuracy (percent) against the training count ``n_c`` (log x), with group thresholds.

    One point per class, labelled with its class name (all of them up to 30 classes, else the 10 least
    accurate); above 30 classes also the mean accuracy in log-spaced count bins (readable for C in the
    thousands). The threshold labels sit above the plot area, clear of the points.
    """
    counts = np.asarray(class_counts, dtype=np.float64)  # [C]
    acc = np.array([np.nan if a is None else a for a in per_class_acc], dtype=np.float64)  # [C]
    ok = np.isfinite(acc) & (counts > 0)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    size = 30 if counts.size <= 100 else max(2, 3000 // counts.size)
    ax.scatter(counts[ok], acc[ok], s=size, alpha=0.7 if counts.size <= 100 else 0.3, label="class")
    if ok.sum() > 30 and counts[ok].max() > counts[ok].min():
        edges = np.geomspace(counts[ok].min(), counts[ok].max() * 1.0001, min(12, int(ok.sum())) + 1)
        which = np.clip(np.digitize(counts[ok], edges) - 1, 0, len(edges) - 2)
        centers, means = [], []
        for b in range(len(edges) - 1):
            if np.any(which == b):
                centers.append(np.sqrt(edges[b] * edges[b + 1]))
                means.append(acc[ok][which == b].mean())
        ax.plot(centers, means, color="black", lw=1.5, label="mean per count bin")
    _label_points(ax, counts, acc, ok, class_names)
    top = ax.get_xaxis_transform()  # x in data units, y in axes units
    for x, name, align in (
        (many_threshold, f"Many > {many_threshold}", "left"),
        (few_threshold, f"Few < {few_threshold}", "right"),
    ):
        ax.axvline(x, color="gray", ls="--", lw=0.8)
        ax.text(x, 1.01, name, color="gray", fontsize=8, ha=align, va="bottom", transform=top)
    ax.set_xscale("log")
    ax.set_ylim(0, 102)
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or "Per-class accuracy vs training count", pad=16)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def _label_points(
    ax: Any, counts: np.ndarray, acc: np.ndarray, ok: np.ndarray, class_names: Sequence[str] | None
) -> None:
    """Name each point (C <= 30) or the 10 least accurate classes, offset so the text does not cover a point."""
    index = np.flatnonzero(ok)
    if index.size > 30:
        index = index[np.argsort(acc[index], kind="stable")[:10]]
    for i in index.tolist():  # Python ints, as a Sequence index
        name = str(class_names[i]) if class_names is not None else str(i)
        ax.annotate(
            name[:18], (counts[i], acc[i]), xytext=(4, 3), textcoords="offset points", fontsize=7, alpha=0.85
        )


def plot_reliability(
    reliability: Mapping[str, Mapping[str, Mapping[str, Sequence[float | None]]]],
    calibration: Mapping[str, Mapping[str, Mapping[str, float]]],
    path: str | Path,
    temperature: float | None = None,
    title: str = "",
    class_bias: bool = False,
) -> Path:
    """Reliability diagrams, one panel per prior (uniform / train / adaptive), ``T = 1`` and fitted ``T``.

    Args:
        reliability: ``reliability[prior][mode]`` = bins (``edges``, ``confidence``, ``accuracy``, ``count``),
            mode ``"raw"`` (T = 1) or ``"scaled"`` (fitted T).
        calibration: ``calibration[prior][mode]`` with ``ece`` / ``nll`` (shown in the legend).
        path: PNG to write.
        temperature: fitted T (legend label).
        title: figure title.
        class_bias: whether the calibrated logits include a per-class bias b (``z / T + b``; legend label).
    """
    priors = [p for p in PRIORS if p in reliability]
    fig, axes = plt.subplots(
        1, len(priors), figsize=(4.4 * len(priors), 5.0), squeeze=False, layout="constrained"
    )
    t_label = "fitted T" if temperature is None else f"T = {temperature:.3g}"
    if class_bias:
        t_label = f"z/T + b, {t_label}"
    for ax, prior in zip(axes[0], priors, strict=True):
        ax.plot([0, 1], [0, 1], color="gray", ls="--", lw=0.8)
        for mode, label, style in (("raw", "T = 1", ":"), ("scaled", t_label, "-")):
            bins = reliability[prior][mode]
            edges = np.asarray(bins["edges"], dtype=np.float64)
            acc = np.array([np.nan if a is None else a for a in bins["accuracy"]], dtype=np.float64)
            centers = 0.5 * (edges[1:] + edges[:-1])
            keep = np.isfinite(acc)
            cal = calibration[prior][mode]
            ax.plot(
                centers[keep],
                acc[keep],
                style,
                marker="o",
                ms=3,
                label=f"{label}: ECE {100 * cal['ece']:.1f}%, NLL {cal['nll']:.3f}",
            )
        _bin_histogram(ax, reliability[prior]["scaled"])
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top-1 probability)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"prior: {prior}")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=7, frameon=False)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _bin_histogram(ax: Any, bins: Mapping[str, Sequence[float | None]]) -> None:
    """Images per confidence bin as light bars on their own right-hand axis (log scale when counts vary)."""
    count = np.asarray(bins["count"], dtype=np.float64)
    edges = np.asarray(bins["edges"], dtype=np.float64)
    if count.sum() <= 0:
        return
    hx = ax.twinx()
    hx.bar(edges[:-1], count, width=np.diff(edges), align="edge", alpha=0.15, color="tab:blue")
    hx.set_ylim(0, 4 * count.max())  # bars in the lower quarter, below most of the curve
    hx.set_ylabel("images per bin (fitted T)", fontsize=7, color="tab:blue")
    hx.tick_params(axis="y", labelsize=7, colors="tab:blue")
    ax.set_zorder(hx.get_zorder() + 1)  # the curves stay on top of the bars
    ax.patch.set_visible(False)


def plot_confusions(
    matrix: Sequence[Sequence[float]],
    classes: Sequence[int],
    class_names: Sequence[str],
    confusions: Sequence[Mapping[str, Any]],
    path: str | Path,
    title: str = "",
) -> Path:
    """Row-normalised confusion among the classes of the most confused pairs (left) and those pairs (right).

    The heatmap holds only the K classes involved in the top-k pairs (K <= 2k), so it stays readable for C
    in the thousands.
    """
    fig, (ax, bx) = plt.subplots(
        1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [1.1, 1]}, layout="constrained"
    )
    names = [str(class_names[c]) for c in classes]
    if len(classes):
        m = np.asarray(matrix, dtype=np.float64)  # [K, K]
        im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        if len(classes) <= 20:
            for i in range(m.shape[0]):
                for j in range(m.shape[1]):
                    if m[i, j] >= 0.005:
                        ax.text(
                            j,
                            i,
                            f"{100 * m[i, j]:.0f}",
                            ha="center",
                            va="center",
                            fontsize=6,
                            color="white" if m[i, j] > 0.5 else "black",
                        )
        fig.colorbar(im, ax=ax, fraction=0.046, label="P(predicted | true)")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        labels = [f"{class_names[p['true']]} → {class_names[p['pred']]}" for p in confusions][::-1]
        rates = [100 * p["rate"] for p in confusions][::-1]
        bx.barh(range(len(rates)), rates, color="tab:red", alpha=0.7)
        bx.set_yticks(range(len(rates)), labels, fontsize=7)
        for i, p in enumerate(list(confusions)[::-1]):
            bx.text(rates[i], i, f" {p['count']}", va="center", fontsize=7)
        bx.set_xlabel("% of the true class's test images (count at the bar end)")
    else:
        ax.text(0.5, 0.5, "no errors", ha="center", va="center")
        ax.set_axis_off()
    bx.set_title("most confused pairs (true → predicted)")
    ax.set_title("confusion among those classes")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _shift_axis(summary: Sequence[Mapping[str, Any]]) -> list[str]:
    return [
        ("F" if s["kind"] == "forward" else "B") + f"{s['imbalance_factor']:g}"
        if s["kind"] != "uniform"
        else "uniform"
        for s in summary
    ]


def plot_label_shift(summary: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Accuracy and NLL of each prior across shifted test sets (forward IF … uniform … backward IF).

    Error bars: standard deviation over seeds.
    """
    ticks = _shift_axis(summary)
    x = np.arange(len(summary))
    panels = [("acc", "top-1 accuracy (%)"), ("balanced_acc", "balanced accuracy (%)"), ("nll", "NLL")]
    if not summary or "balanced_acc" not in summary[0]["methods"].get("uniform", {}):
        panels.pop(1)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), layout="constrained")
    for ax, (metric, label) in zip(axes, panels, strict=True):
        for method in SHIFT_METHODS:
            if not summary or method not in summary[0]["methods"]:
                continue
            mean = [s["methods"][method][metric] for s in summary]
            std = [s["methods"][method].get(f"{metric}_std", 0.0) for s in summary]
            ax.errorbar(
                x,
                mean,
                yerr=std,
                marker="o",
                ms=4,
                capsize=2,
                color=COLORS[method],
                ls="--" if method == "oracle" else "-",
                label=method,
            )
        ax.set_xticks(x, ticks, rotation=45, fontsize=8)
        ax.set_xlabel("test prior (F = forward-LT, B = backward-LT, number = IF)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="scoring prior", title_fontsize=8)
    seeds = summary[0]["seeds"] if summary else 0
    fig.suptitle(title or f"Label-shift study (mean ± std over {seeds} seeds)")
    return _save(fig, path)


def plot_label_shift_comparison(
    summaries: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, method: str = "adaptive"
) -> Path:
    """Accuracy of one prior (default ``adaptive``) across shifted sets, one line per model."""
    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    ticks: list[str] = []
    for label, summary in summaries.items():
        ticks = _shift_axis(summary) if len(summary) > len(ticks) else ticks
        mean = [s["methods"][method]["acc"] for s in summary]
        ax.plot(np.arange(len(summary)), mean, marker="o", ms=4, label=label)
    ax.set_xticks(np.arange(len(ticks)), ticks, rotation=45, fontsize=8)
    ax.set_ylabel(f"top-1 accuracy (%), prior: {method}")
    ax.set_xlabel("test prior (F = forward-LT, B = backward-LT, number = IF)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="model", title_fontsize=8)
    ax.set_title(f"Models under label shift (scoring prior: {method})")
    return _save(fig, path)
