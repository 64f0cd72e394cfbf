"""Numbers of the evaluation report, computed from raw logits ``z`` ``[N, C]`` and labels ``[N]`` (numpy only).

Every posterior is the serving one (:mod:`rescom.calibration`, method brief §6.1):
``p = softmax(a + log π)`` with the calibrated logits ``a = z / T + b``
(:func:`rescom.calibration.calibrate_logits`, the function the service uses) and

- ``uniform``: no shift (the Balanced-Softmax posterior under a balanced test set);
- ``train``: ``π_train = n_c / N`` from the training class counts;
- ``adaptive``: ``π̂`` estimated by EM (Saerens et al. 2002) on the unlabelled logits being scored, with a
  symmetric Dirichlet(α) MAP M-step (:func:`rescom.calibration.em_prior`);
- ``oracle`` (label-shift study only): the true prior ``π_true`` of the resampled test set.

``T`` is the temperature and ``b`` the per-class bias fitted on the validation split (``rescom.json``
``calibration.temperature`` / ``calibration.class_bias``; ``b = 0`` for plain temperature scaling or old
exports); the calibration table reports every prior on the raw logits (``"raw"``: ``T = 1``, ``b = 0``) and on
the calibrated ones (``"scaled"``: fitted ``T`` and ``b``). EM (``adaptive``) always runs on the calibrated
logits, as in the service.

``source_prior`` ``π_s`` (default ``None`` = uniform, the serving contract for Balanced-Softmax logits) is the
prior the model's ``softmax(z / T)`` is calibrated for. A plain-CE model is calibrated for ``π_train``; with
``source_prior = π_train`` every posterior becomes ``softmax(z / T − log π_s + log π)`` (brief §6.1) and EM
uses the same ratio, so such a model is compared on equal terms (its ``uniform`` row is then post-hoc logit
adjustment, its ``train`` row the plain argmax).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from rescom.calibration import (
    brier_score,
    calibrate_logits,
    calibrated_probs,
    em_prior,
    expected_calibration_error,
    nll,
    prior_from_counts,
    reliability_bins,
)
from rescom.evaluation.shift import SHIFT_KINDS, make_shifted_set
from rescom.metrics import longtail_metrics, shot_groups

__all__ = [
    "DEFAULT_EM_ALPHA",
    "DEFAULT_SHIFT_FACTORS",
    "EM_MAX_ITER",
    "EM_TOL",
    "PRIORS",
    "SHIFT_METHODS",
    "TEMPERATURE_MODES",
    "posterior",
    "relative_prior",
    "balanced_accuracy",
    "calibration_metrics",
    "top_confusions",
    "confusion_submatrix",
    "label_shift_study",
    "summarize_shift",
    "evaluate_logits",
]

# EM settings of the service's adaptive prior (service/priors.py AdaptivePrior, service/config.py adaptive_alpha),
# so the report measures what is served: symmetric Dirichlet(α = 2), i.e. α − 1 = 1 pseudo-count per class, which
# keeps a class absent from a small window above 0 (so it can come back); at most 200 iterations, ‖Δπ‖₁ < 1e-7.
DEFAULT_EM_ALPHA = 2.0
EM_MAX_ITER = 200
EM_TOL = 1e-7
DEFAULT_SHIFT_FACTORS = (2.0, 5.0, 10.0, 25.0, 50.0)  # the IFs of LADE / SADE's shifted ImageNet-LT test sets
PRIORS = ("uniform", "train", "adaptive")
SHIFT_METHODS = ("uniform", "train", "oracle", "adaptive")
TEMPERATURE_MODES = ("raw", "scaled")  # T = 1, T = fitted


def relative_prior(prior: np.ndarray | None, source_prior: np.ndarray | None) -> np.ndarray | None:
    """``π / π_s`` normalised (``None`` = uniform), so ``softmax(z / T + log(π / π_s))`` is the posterior under π.

    ``softmax`` ignores the constant of the normalisation; with ``source_prior=None`` this returns ``prior``.
    """
    if source_prior is None:
        return prior
    source = np.asarray(source_prior, dtype=np.float64)
    if source.ndim != 1 or np.any(source <= 0) or not np.all(np.isfinite(source)):
        raise ValueError("source_prior must be a [C] vector of finite probabilities > 0")
    base = np.ones_like(source) if prior is None else np.asarray(prior, dtype=np.float64)
    weights = base / source
    return weights / weights.sum()


def posterior(
    logits: np.ndarray,
    prior: str,
    temperature: float = 1.0,
    train_prior: np.ndarray | None = None,
    true_prior: np.ndarray | None = None,
    em_alpha: float = DEFAULT_EM_ALPHA,
    source_prior: np.ndarray | None = None,
    class_bias: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``softmax(z / T + b + log π − log π_s)`` for a named prior π (``π_s`` uniform by default: no correction).

    Args:
        logits: ``[N, C]`` raw logits z.
        prior: ``"uniform"``, ``"train"``, ``"adaptive"`` or ``"oracle"``.
        temperature: T > 0.
        train_prior: ``π_train`` ``[C]`` (needed by ``"train"``).
        true_prior: ``π_true`` ``[C]`` (needed by ``"oracle"``).
        em_alpha: Dirichlet α of the EM M-step (``"adaptive"``), >= 1.
        source_prior: ``π_s`` ``[C]`` the logits are calibrated for (``None`` = uniform, Balanced Softmax).
        class_bias: per-class bias ``b`` ``[C]`` (``None`` = 0), applied with ``T`` and inside EM.

    Returns:
        ``(probs [N, C], π [C] or None for uniform)``.
    """
    if prior == "uniform":
        pi = None
    elif prior == "train":
        if train_prior is None:
            raise ValueError("prior 'train' needs train_prior (the training class counts normalised)")
        pi = np.asarray(train_prior, dtype=np.float64)
    elif prior == "oracle":
        if true_prior is None:
            raise ValueError("prior 'oracle' needs true_prior (the label histogram of the scored set)")
        pi = np.asarray(true_prior, dtype=np.float64)
    elif prior == "adaptive":
        pi, _ = em_prior(
            logits,
            temperature=temperature,
            source_prior=source_prior,
            dirichlet_alpha=em_alpha,
            max_iter=EM_MAX_ITER,
            tol=EM_TOL,
            class_bias=class_bias,
        )
    else:
        raise ValueError(f"prior must be one of uniform, train, adaptive, oracle; got {prior!r}")
    probs = calibrated_probs(logits, temperature, relative_prior(pi, source_prior), class_bias=class_bias)
    return probs, pi


def balanced_accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """``balanced_acc``: mean over the classes present in ``labels`` of each class's accuracy (percent).

    Equal to top-1 on a balanced test set; on an imbalanced one it is the number a long-tail user means.
    """
    labels = np.asarray(labels, dtype=np.int64)
    correct = (np.asarray(predictions) == labels).astype(np.float64)
    hits = np.bincount(labels, weights=correct)
    support = np.bincount(labels)
    present = support > 0
    return float(100.0 * np.mean(hits[present] / support[present]))


def calibration_metrics(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, float]:
    """Accuracy and calibration metrics of posteriors ``probs`` ``[N, C]`` against ``labels`` ``[N]``.

    ``top1`` and ``balanced_acc`` are in percent (``acc`` = ``top1``, kept for older readers); ``nll``,
    ``brier`` and ``ece`` (``n_bins`` equal-width bins) are fractions.
    """
    labels = np.asarray(labels, dtype=np.int64)
    top1 = float(100.0 * np.mean(probs.argmax(axis=1) == labels))
    return {
        "top1": top1,
        "balanced_acc": balanced_accuracy(probs.argmax(axis=1), labels),
        "acc": top1,
        "nll": nll(probs, labels),
        "brier": brier_score(probs, labels),
        "ece": expected_calibration_error(probs, labels, n_bins),
    }


def top_confusions(labels: np.ndarray, predictions: np.ndarray, k: int = 10) -> list[dict[str, Any]]:
    """The ``k`` most frequent off-diagonal (true, predicted) pairs, most frequent first.

    Works for any C (no ``[C, C]`` matrix is built: pairs are counted with ``np.unique``).

    Returns:
        ``[{"true": i, "pred": j, "count": n_ij, "rate": n_ij / n_i}]`` (``rate`` = share of class i's
        test images predicted as j).
    """
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    wrong = labels != predictions
    if not wrong.any() or k <= 0:
        return []
    support = np.bincount(labels)  # [<=C]
    width = int(max(labels.max(), predictions.max())) + 1
    pairs, counts = np.unique(labels[wrong] * width + predictions[wrong], return_counts=True)
    order = np.lexsort((pairs, -counts))[:k]  # by count desc, then by pair for a stable order
    return [
        {
            "true": int(pairs[i] // width),
            "pred": int(pairs[i] % width),
            "count": int(counts[i]),
            "rate": float(counts[i] / support[pairs[i] // width]),
        }
        for i in order
    ]


def confusion_submatrix(labels: np.ndarray, predictions: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Row-normalised confusion ``[K, K]`` restricted to ``classes``: ``M[a, b] = P(ŷ = classes[b] | y = classes[a])``.

    Rows use every test image of the class (predictions outside ``classes`` are the rows' missing mass).
    """
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    classes = [int(c) for c in classes]
    matrix = np.zeros((len(classes), len(classes)))  # [K, K]
    for a, true in enumerate(classes):
        mask = labels == true
        if mask.any():
            pred = predictions[mask]
            matrix[a] = [np.mean(pred == p) for p in classes]
    return matrix


def _prior_tv(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Total-variation distance ``½‖π̂ − π‖₁``."""
    return float(0.5 * np.abs(np.asarray(estimate) - np.asarray(truth)).sum())


def label_shift_study(
    logits: np.ndarray,
    labels: np.ndarray,
    train_prior: np.ndarray,
    temperature: float = 1.0,
    kinds: Iterable[str] = SHIFT_KINDS,
    factors: Iterable[float] = DEFAULT_SHIFT_FACTORS,
    seeds: Iterable[int] = range(5),
    em_alpha: float = DEFAULT_EM_ALPHA,
    n_max: int | None = None,
    source_prior: np.ndarray | None = None,
    class_bias: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Accuracy and NLL of each prior on test sets resampled to shifted priors (:mod:`rescom.evaluation.shift`).

    For every ``kind`` × IF × seed (``uniform`` once per seed, whatever the IFs) the set is drawn, then scored
    with ``uniform``, ``train``, ``oracle`` (``π_true`` = realised histogram) and ``adaptive`` (EM on the
    set's own unlabelled logits): ``softmax(z / T + b + log π)`` for each (``b = 0`` when ``class_bias`` is
    ``None``).

    The test split is resampled, never enlarged: with the default ``n_max`` (smallest test class) the
    ``uniform`` set is the whole balanced test split in every seed (seeds then only shuffle it), and a
    forward / backward set with a large IF keeps few images of its rare classes, so differences of a few
    tenths of a point are a handful of images.

    Args:
        logits: ``[N, C]`` raw logits of the whole test set.
        labels: ``[N]``.
        train_prior: ``π_train`` ``[C]``.
        temperature: T used by every method (and by EM).
        kinds: subset of ``("forward", "uniform", "backward")``.
        factors: imbalance factors IF >= 1.
        seeds: RNG seeds; one resampled set per seed.
        em_alpha: Dirichlet α of EM.
        n_max: head-class size (default: smallest test class, replacement-free).
        source_prior: ``π_s`` the logits are calibrated for (``None`` = uniform; see the module docstring).
        class_bias: per-class bias ``b`` ``[C]`` added after ``T`` (``None`` = 0), for every method and EM.

    Returns:
        One record per set: ``{"set", "kind", "imbalance_factor", "seed", "size", "with_replacement",
        "em_prior_tv", "em_iterations", "methods": {method: {"acc", "nll"}}}``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    calibrated = calibrate_logits(logits, temperature, class_bias)  # [N, C] a = z / T + b, computed once
    num_classes = calibrated.shape[1]
    factors = [float(f) for f in factors]
    seeds = [int(s) for s in seeds]
    records: list[dict[str, Any]] = []
    for kind in kinds:
        for factor in [1.0] if kind == "uniform" else factors:
            for seed in seeds:
                shifted = make_shifted_set(labels, kind, factor, seed, num_classes, n_max)
                a, y = calibrated[shifted.indices], labels[shifted.indices]  # [M, C], [M]
                pi_hat, iterations = em_prior(
                    a,
                    source_prior=source_prior,
                    dirichlet_alpha=em_alpha,
                    max_iter=EM_MAX_ITER,
                    tol=EM_TOL,
                )
                priors = {"uniform": None, "train": train_prior, "oracle": shifted.prior, "adaptive": pi_hat}
                methods: dict[str, dict[str, float]] = {}
                for method in SHIFT_METHODS:
                    probs = calibrated_probs(a, 1.0, relative_prior(priors[method], source_prior))  # [M, C]
                    methods[method] = {
                        "acc": float(100.0 * np.mean(probs.argmax(1) == y)),
                        "top1": float(100.0 * np.mean(probs.argmax(1) == y)),
                        "balanced_acc": balanced_accuracy(probs.argmax(1), y),
                        "nll": nll(probs, y),
                    }
                records.append(
                    {
                        "set": shifted.name,
                        "kind": kind,
                        "imbalance_factor": shifted.imbalance_factor,
                        "seed": seed,
                        "size": int(shifted.counts.sum()),
                        "with_replacement": bool(shifted.with_replacement.any()),
                        "em_prior_tv": _prior_tv(pi_hat, shifted.prior),
                        "em_iterations": int(iterations),
                        "methods": methods,
                    }
                )
    return records


def _set_order(record: dict[str, Any]) -> tuple[int, float]:
    """Sort key of a shifted set: forward (largest IF first), uniform, backward (smallest IF first)."""
    factor = record["imbalance_factor"]
    return {"forward": (0, -factor), "uniform": (1, 0.0), "backward": (2, factor)}[record["kind"]]


def summarize_shift(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds per resampled set, in the SADE table order (forward-50 … backward-50).

    Returns:
        ``[{"set", "kind", "imbalance_factor", "seeds", "size", "em_prior_tv", "methods": {method: {"acc",
        "acc_std", "nll", "nll_std"}}, "adaptive_gap": {"oracle" | "uniform": {"acc", "acc_std", "nll",
        "nll_std"}}}]``: ``adaptive_gap`` is the per-seed difference adaptive − reference (accuracy in points),
        averaged over seeds; std is the population std over seeds (0 for one seed).
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in sorted(records, key=_set_order):
        groups.setdefault(record["set"], []).append(record)
    summary = []
    for name, group in groups.items():
        methods = {}
        for method in group[0]["methods"]:
            acc = np.array([r["methods"][method]["acc"] for r in group])
            bal = np.array([r["methods"][method].get("balanced_acc", np.nan) for r in group])
            loss = np.array([r["methods"][method]["nll"] for r in group])
            methods[method] = {
                "acc": float(acc.mean()),
                "acc_std": float(acc.std()),
                "top1": float(acc.mean()),
                "balanced_acc": float(bal.mean()),
                "balanced_acc_std": float(bal.std()),
                "nll": float(loss.mean()),
                "nll_std": float(loss.std()),
            }
        summary.append(
            {
                "set": name,
                "kind": group[0]["kind"],
                "imbalance_factor": group[0]["imbalance_factor"],
                "seeds": len(group),
                "size": float(np.mean([r["size"] for r in group])),
                "em_prior_tv": float(np.mean([r["em_prior_tv"] for r in group])),
                "methods": methods,
                "adaptive_gap": {
                    ref: _paired_gap(group, "adaptive", ref)
                    for ref in ("oracle", "uniform")
                    if ref in methods
                },
            }
        )
    return summary


def _paired_gap(group: Sequence[dict[str, Any]], method: str, reference: str) -> dict[str, float]:
    """Per-seed ``method − reference`` accuracy (points) and NLL: mean and std over seeds (paired)."""
    if method not in group[0]["methods"]:
        return {}
    acc = np.array([r["methods"][method]["acc"] - r["methods"][reference]["acc"] for r in group])
    loss = np.array([r["methods"][method]["nll"] - r["methods"][reference]["nll"] for r in group])
    return {
        "acc": float(acc.mean()),
        "acc_std": float(acc.std()),
        "nll": float(loss.mean()),
        "nll_std": float(loss.std()),
    }


def _bins_to_lists(bins: dict[str, np.ndarray]) -> dict[str, list[float | None]]:
    return {k: [None if not np.isfinite(v) else float(v) for v in arr] for k, arr in bins.items()}


def evaluate_logits(
    logits: np.ndarray,
    labels: np.ndarray,
    class_counts: Sequence[int],
    temperature: float | None = None,
    *,
    many_threshold: int = 100,
    few_threshold: int = 20,
    em_alpha: float = DEFAULT_EM_ALPHA,
    n_bins: int = 15,
    top_k: int = 10,
    shift_kinds: Iterable[str] = SHIFT_KINDS,
    shift_factors: Iterable[float] = DEFAULT_SHIFT_FACTORS,
    shift_seeds: Iterable[int] = range(5),
    source_prior: np.ndarray | None = None,
    class_bias: np.ndarray | None = None,
) -> dict[str, Any]:
    """Everything the report shows for one model, as plain JSON-ready values.

    Args:
        logits: ``[N, C]`` raw logits z of the test split.
        labels: ``[N]``.
        class_counts: ``[C]`` training counts ``n_c`` (``π_train = n_c / Σ n``; Many/Medium/Few groups).
        temperature: fitted T, or ``None`` when the model has none (then ``"scaled"`` uses T = 1).
        many_threshold: a class is Many-shot when its training count ``n_c > many_threshold``.
        few_threshold: a class is Few-shot when ``n_c < few_threshold`` (Medium-shot in between).
        em_alpha: Dirichlet α of EM (adaptive prior), >= 1.
        n_bins: reliability / ECE bins.
        top_k: most-confused pairs to list.
        shift_kinds: label-shift study kinds (``forward``, ``uniform``, ``backward``).
            See :func:`label_shift_study`.
        shift_factors: imbalance factors of the shifted test priors in the study.
        shift_seeds: resampling seeds of the study (a set per kind × factor × seed; ``uniform`` once per seed).
        source_prior: ``π_s`` the logits are calibrated for (``None`` = uniform, the serving contract; pass
            ``π_train`` for a plain-CE model).
        class_bias: per-class bias ``b`` ``[C]`` fitted with ``T`` (BCTS; ``None`` = 0): ``"scaled"`` and the
            label-shift study use ``z / T + b``, ``"raw"`` uses ``z``.

    Returns:
        dict with ``num_samples``, ``num_classes``, ``temperature``, ``class_bias``, ``groups`` (classes per group),
        ``longtail`` (per prior, fitted T: acc / many / medium / few / per_class_acc), ``calibration``
        (per prior × ``raw``/``scaled``: acc / nll / brier / ece), ``reliability`` (same keys: bins),
        ``adaptive_prior`` (EM π̂ on the whole split), ``confusions`` (top-k pairs), ``confusion_classes`` and
        ``confusion_matrix`` (row-normalised, classes of those pairs), ``label_shift`` (``records`` and
        ``summary``).
    """
    logits = np.asarray(logits, dtype=np.float64)  # [N, C]
    labels = np.asarray(labels, dtype=np.int64)  # [N]
    if logits.ndim != 2 or labels.shape != (logits.shape[0],) or logits.shape[0] == 0:
        raise ValueError(
            f"need logits [N, C] and labels [N] with N > 0, got {logits.shape} and {labels.shape}"
        )
    num_classes = logits.shape[1]
    if len(class_counts) != num_classes:
        raise ValueError(f"class_counts has {len(class_counts)} entries, the logits have C = {num_classes}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    if temperature is not None and not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature T must be a finite number > 0 or None, got {temperature}")
    t_fit = 1.0 if temperature is None else float(temperature)
    bias = None if class_bias is None else np.asarray(class_bias, dtype=np.float64)  # [C]
    if bias is not None and (bias.shape != (num_classes,) or not np.all(np.isfinite(bias))):
        raise ValueError(f"class_bias b must be {num_classes} finite numbers, got shape {bias.shape}")
    train_prior = prior_from_counts(class_counts)

    longtail: dict[str, Any] = {}
    calibration: dict[str, dict[str, Any]] = {}
    reliability: dict[str, dict[str, Any]] = {}
    adaptive_prior = None
    for prior in PRIORS:
        calibration[prior], reliability[prior] = {}, {}
        for mode, t, b in zip(TEMPERATURE_MODES, (1.0, t_fit), (None, bias), strict=True):
            probs, pi = posterior(
                logits, prior, t, train_prior, em_alpha=em_alpha, source_prior=source_prior, class_bias=b
            )
            calibration[prior][mode] = calibration_metrics(probs, labels, n_bins)
            reliability[prior][mode] = _bins_to_lists(reliability_bins(probs, labels, n_bins))
            if mode == "scaled":
                longtail[prior] = longtail_metrics(
                    probs.argmax(1), labels, class_counts, many_threshold, few_threshold
                )
                longtail[prior].setdefault("top1", longtail[prior]["acc"])
                longtail[prior].setdefault("balanced_acc", balanced_accuracy(probs.argmax(1), labels))
                if prior == "adaptive" and pi is not None:  # posterior() returns the EM estimate π̂ for it
                    adaptive_prior = [float(p) for p in pi]

    # uniform prior as served (z / T + b; the argmax of the raw logits when b = 0, for Balanced Softmax)
    predictions = calibrated_probs(logits, t_fit, relative_prior(None, source_prior), class_bias=bias).argmax(
        axis=1
    )
    confusions = top_confusions(labels, predictions, top_k)
    classes = sorted({p[key] for p in confusions for key in ("true", "pred")})
    records = label_shift_study(
        logits,
        labels,
        train_prior,
        t_fit,
        shift_kinds,
        shift_factors,
        shift_seeds,
        em_alpha,
        None,
        source_prior,
        bias,
    )
    groups = shot_groups(class_counts, many_threshold, few_threshold)
    return {
        "num_samples": int(len(labels)),
        "num_classes": int(num_classes),
        "temperature": temperature,
        "class_bias": None if bias is None else [float(v) for v in bias],
        "em_alpha": float(em_alpha),
        "source_prior": None if source_prior is None else [float(p) for p in source_prior],
        "thresholds": {"many": many_threshold, "few": few_threshold},
        "groups": {name: int(mask.sum()) for name, mask in groups.items()},
        "test_counts": np.bincount(labels, minlength=num_classes).tolist(),
        "longtail": longtail,
        "calibration": calibration,
        "reliability": reliability,
        "adaptive_prior": adaptive_prior,
        "confusions": confusions,
        "confusion_classes": classes,
        "confusion_matrix": confusion_submatrix(labels, predictions, classes).tolist(),
        "label_shift": {"records": records, "summary": summarize_shift(records)},
    }
