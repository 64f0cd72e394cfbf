"""Per-class calibration of Balanced-Softmax logits: numpy + stdlib only.

A ResCom model is trained with the Siamese Balanced Softmax, so its raw logits ``z`` give
``softmax(z) ≈ p(y | x)`` under a **uniform** label prior. A deployment whose label distribution is
``π_t`` gets its posterior by a logit shift (Ren et al. 2020; Menon et al. 2021):

    p_t(y | x) = softmax(z / T + log π_t)

- ``T`` is a temperature fitted by NLL on a balanced validation split (:func:`fit_temperature`), or, with
  bias-corrected temperature scaling (BCTS, Alexandari et al. 2020), ``T`` and a per-class bias ``b`` fitted
  jointly (:func:`fit_bias_corrected_temperature`); the calibrated logits are then ``a = z / T + b``
  (:func:`calibrate_logits`, the one definition that export, evaluation and the service share) and every
  posterior is ``softmax(a + log π_t)``. ``b = 0`` is plain temperature scaling.
- ``π_t`` is uniform (no shift), the training prior ``π_train = n_c / N`` (:func:`prior_from_counts`),
  a user-supplied prior (:func:`normalize_prior`), or an estimate from unlabelled traffic by EM
  (Saerens, Latinne & Decaestecker 2002; :func:`em_prior`).

Training fits the parameters, export stores them in the model's metadata, the service applies them. This
module must never import torch: the service image does not have it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "softmax",
    "log_softmax",
    "prior_from_counts",
    "normalize_prior",
    "log_prior",
    "parse_class_bias",
    "calibrate_logits",
    "adjust_logits",
    "calibrated_probs",
    "fit_temperature",
    "fit_bias_corrected_temperature",
    "nll",
    "brier_score",
    "expected_calibration_error",
    "reliability_bins",
    "em_prior",
    "CALIBRATION_FITS",
    "count_scaled_bias_std",
    "fit_calibration_for_split",
]

ArrayLike = Sequence[float] | np.ndarray


def log_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable ``log softmax`` along ``axis``; ``-inf`` entries stay ``-inf``."""
    z = np.asarray(z, dtype=np.float64)
    m = np.max(z, axis=axis, keepdims=True)
    if not np.all(np.isfinite(m)):
        raise ValueError("every row needs at least one finite logit")
    shifted = z - m
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis``."""
    return np.exp(log_softmax(z, axis=axis))


def prior_from_counts(class_counts: ArrayLike) -> np.ndarray:
    """Training prior ``π_c = n_c / N`` from per-class training counts ``n_c`` (shape ``[C]``)."""
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"class_counts must be a non-empty 1-D list, got shape {counts.shape}")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0) or counts.sum() <= 0:
        raise ValueError("class_counts must be finite, non-negative and not all zero")
    return counts / counts.sum()


def normalize_prior(
    prior: ArrayLike | Mapping[str, float],
    num_classes: int,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """Validate a user prior ``π_t`` and normalise it to sum to 1.

    Args:
        prior: either a sequence of ``C`` non-negative weights, or a mapping from class name (or class index
            written as a string or int) to a non-negative weight. Classes missing from a mapping get weight 0,
            which means "never predicted" under that prior.
        num_classes: ``C``.
        class_names: names used to resolve mapping keys.

    Returns:
        ``np.ndarray`` float64 ``[C]`` summing to 1.

    Raises:
        ValueError: with the offending class or value when a weight is negative, NaN/inf, unknown, or all
            weights are zero.
    """
    if isinstance(prior, Mapping):
        weights = np.zeros(num_classes, dtype=np.float64)
        index = {name: i for i, name in enumerate(class_names or [])}
        for key, value in prior.items():
            cls = _resolve_class(key, num_classes, index)
            weights[cls] = _check_weight(value, key)
    else:
        values = list(prior)
        if len(values) != num_classes:
            raise ValueError(f"prior has {len(values)} weights, the model has {num_classes} classes")
        weights = np.array([_check_weight(v, i) for i, v in enumerate(values)], dtype=np.float64)
    total = weights.sum()
    if total <= 0:
        raise ValueError("prior weights are all zero: at least one class needs a positive weight")
    return weights / total


def _resolve_class(key: Any, num_classes: int, index: Mapping[str, int]) -> int:
    if isinstance(key, str) and key in index:
        return index[key]
    try:
        cls = int(key)
    except (TypeError, ValueError):
        known = ", ".join(list(index)[:10]) + (", ..." if len(index) > 10 else "")
        raise ValueError(f"unknown class {key!r} in prior; known classes: {known}") from None
    if not 0 <= cls < num_classes:
        raise ValueError(f"class index {cls} in prior is out of range 0..{num_classes - 1}")
    return cls


def _check_weight(value: Any, key: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise ValueError(f"prior weight for class {key!r} must be a number, got {value!r}")
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"prior weight for class {key!r} must be finite and >= 0, got {value}")
    return value


def log_prior(prior: ArrayLike, eps: float = 0.0) -> np.ndarray:
    """``log π``; zero entries become ``-inf`` (class masked out) unless ``eps > 0`` is added first."""
    p = np.asarray(prior, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.log(p + eps)


def parse_class_bias(value: Any, num_classes: int) -> np.ndarray | None:
    """Validate a per-class logit bias ``b`` (``calibration.class_bias`` of ``rescom.json``).

    Args:
        value: ``None`` (no bias: exports without one, or without a validation split) or ``C`` finite numbers.
        num_classes: ``C``.

    Returns:
        ``None`` when there is no bias or it is all zeros, else float64 ``[C]``.

    Raises:
        ValueError: not a list of ``C`` finite numbers.
    """
    if value is None:
        return None
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence | np.ndarray):
        raise ValueError(f"class_bias must be a list of {num_classes} numbers, got {type(value).__name__}")
    items = list(value)
    if len(items) != num_classes:
        raise ValueError(f"class_bias has {len(items)} entries, the model has {num_classes} classes")
    for i, v in enumerate(items):
        if isinstance(v, bool) or not isinstance(v, int | float | np.floating | np.integer):
            raise ValueError(f"class_bias[{i}] must be a number, got {v!r}")
        if not np.isfinite(float(v)):
            raise ValueError(f"class_bias[{i}] must be finite, got {v}")
    bias = np.asarray(items, dtype=np.float64)
    return None if not np.any(bias) else bias


def calibrate_logits(
    logits: np.ndarray, temperature: float = 1.0, class_bias: ArrayLike | None = None
) -> np.ndarray:
    """Calibrated logits ``a = z / T + b`` (``[N, C]`` float64); ``class_bias=None`` means ``b = 0``.

    ``softmax(a)`` is the posterior under the prior the model is calibrated for (uniform for Balanced Softmax).
    Export fits ``T`` and ``b``, and the evaluation and the service (including the adaptive prior's EM window)
    all go through this function, so what is measured is what is served.
    """
    if not temperature > 0 or not np.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    a = np.asarray(logits, dtype=np.float64) / temperature  # [N, C]
    if class_bias is None:
        return a
    b = np.asarray(class_bias, dtype=np.float64)  # [C]
    if b.shape != (a.shape[-1],):
        raise ValueError(f"class_bias has shape {b.shape}, logits have {a.shape[-1]} classes")
    return a + b


def adjust_logits(
    logits: np.ndarray,
    temperature: float = 1.0,
    prior: ArrayLike | None = None,
    prior_strength: float = 1.0,
    class_bias: ArrayLike | None = None,
) -> np.ndarray:
    """Return ``z / T + b + s · log π`` (``[N, C]``); ``prior=None`` means uniform (no shift), ``None`` bias 0.

    ``s`` (``prior_strength``, Menon et al.'s τ) in ``[0, 1]`` softens the shift; 1 is Bayes' rule.
    """
    a = calibrate_logits(logits, temperature, class_bias)  # [N, C]
    if prior is None:
        return a
    lp = log_prior(prior)  # [C]
    if lp.shape[-1] != a.shape[-1]:
        raise ValueError(f"prior has {lp.shape[-1]} classes, logits have {a.shape[-1]}")
    return a + prior_strength * lp


def calibrated_probs(
    logits: np.ndarray,
    temperature: float = 1.0,
    prior: ArrayLike | None = None,
    prior_strength: float = 1.0,
    class_bias: ArrayLike | None = None,
) -> np.ndarray:
    """``softmax(z / T + b + s · log π)``: the posterior under prior ``π``.

    ``π`` is uniform when ``prior`` is ``None``; the per-class bias ``b`` is 0 when ``class_bias`` is
    ``None``.
    """
    return softmax(adjust_logits(logits, temperature, prior, prior_strength, class_bias))


def nll(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of the true labels."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], eps, 1.0))))


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score: mean over samples of ``Σ_c (p_c − 1[y = c])²``."""
    probs = np.asarray(probs, dtype=np.float64)
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)] = 1.0
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Confidence histogram for a reliability diagram (equal-width bins on the top-1 confidence).

    Returns:
        dict with ``edges`` ``[n_bins+1]``, ``confidence`` / ``accuracy`` (mean per bin, NaN when empty) and
        ``count`` ``[n_bins]``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=conf, minlength=n_bins) / count
        mean_acc = np.bincount(which, weights=correct, minlength=n_bins) / count
    return {"edges": edges, "confidence": mean_conf, "accuracy": mean_acc, "count": count}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE: ``Σ_b (|B_b| / N) · |acc(B_b) − conf(B_b)|`` over equal-width confidence bins."""
    bins = reliability_bins(probs, labels, n_bins)
    mask = bins["count"] > 0
    gaps = np.abs(bins["accuracy"][mask] - bins["confidence"][mask])
    return float(np.sum(bins["count"][mask] * gaps) / np.sum(bins["count"]))


def fit_temperature(
    logits: np.ndarray,
    labels: np.ndarray,
    bounds: tuple[float, float] = (0.05, 20.0),
    tol: float = 1e-7,
) -> float:
    """Fit ``T`` minimising the NLL of ``softmax(z / T)`` on labelled (validation) data.

    NLL is convex in ``β = 1/T`` (its second derivative is the variance of ``z`` under the softmax), so the
    minimum is found by bisection on the derivative ``dNLL/dβ = mean_i(E_p[z_i] − z_{i,y_i})``. The result is
    clipped to ``bounds``.
    """
    z = np.asarray(logits, dtype=np.float64)  # [N, C]
    y = np.asarray(labels, dtype=np.int64)  # [N]
    if z.ndim != 2 or y.shape != (z.shape[0],) or z.shape[0] == 0:
        raise ValueError(f"need logits [N, C] and labels [N] with N > 0, got {z.shape} and {y.shape}")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"labels must be in 0..{z.shape[1] - 1}")
    z_true = z[np.arange(len(y)), y]

    def slope(beta: float) -> float:
        p = softmax(beta * z)
        return float(np.mean(np.sum(p * z, axis=1) - z_true))

    lo, hi = 1.0 / bounds[1], 1.0 / bounds[0]
    if slope(lo) >= 0:
        return float(bounds[1])
    if slope(hi) <= 0:
        return float(bounds[0])
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if slope(mid) > 0:
            hi = mid
        else:
            lo = mid
        if hi - lo < tol * mid:
            break
    return float(1.0 / (0.5 * (lo + hi)))


def fit_bias_corrected_temperature(
    logits: np.ndarray,
    labels: np.ndarray,
    bias_prior_std: float | ArrayLike | None = 1.0,
    bounds: tuple[float, float] = (0.05, 20.0),
    max_iter: int = 100,
    tol: float = 1e-12,
) -> tuple[float, np.ndarray]:
    """Bias-corrected temperature scaling (BCTS, Alexandari et al. 2020): fit ``T`` and a per-class bias ``b``.

    Minimises over ``β = 1/T`` and ``b`` ``[C]``

        L(β, b) = Σ_i −log softmax(β z_i + b)_{y_i} + ‖b‖² / (2 σ²)

    i.e. the NLL of ``softmax(z / T + b)`` on labelled (validation) data with a Gaussian prior ``N(0, σ²)`` on
    each bias (MAP; ``σ = bias_prior_std``, ``None`` = no penalty). The penalty is on the sum, not the mean, of
    the NLL, so it fades as the split grows. ``L`` is convex in ``(β, b)`` (log-sum-exp of a linear map plus a
    quadratic), so damped Newton steps (backtracking line search) find the minimum. ``softmax`` ignores a
    constant added to ``b``; the gauge term ``(Σ_c b_c)² / 2`` (zero at the returned point) picks the
    mean-zero ``b``. ``β`` is kept within ``bounds`` (as :func:`fit_temperature` clips ``T``).

    Why: EM prior estimation (:func:`em_prior`) is only unbiased when ``softmax(z / T + b)`` averaged over data
    drawn from the source prior gives that prior back; the stationarity condition of the unpenalised NLL in
    ``b``, ``Σ_i p_i = Σ_i onehot(y_i)``, is exactly that condition on the validation split.

    Args:
        logits: ``[N, C]`` raw logits ``z``.
        labels: ``[N]`` labels in ``0..C-1``.
        bias_prior_std: ``σ > 0`` of the Gaussian prior on ``b`` (logit units; a scalar or one ``σ_c`` per class,
            e.g. :func:`count_scaled_bias_std` for tiny validation splits), or ``None`` for plain maximum
            likelihood (then every class needs at least one labelled sample, else its bias runs to ``−∞``).
        bounds: ``(T_min, T_max)``.
        max_iter: Newton iterations at most.
        tol: stop when the Newton decrement ``gᵀH⁻¹g / 2`` per sample is below ``tol``.

    Returns:
        ``(T, b)``: ``T`` a float, ``b`` float64 ``[C]`` with ``Σ_c b_c = 0``. Deterministic.

    Raises:
        ValueError: bad shapes, labels out of range, ``σ <= 0``, or a class without samples when ``σ`` is None.
    """
    z = np.asarray(logits, dtype=np.float64)  # [N, C]
    y = np.asarray(labels, dtype=np.int64)  # [N]
    if z.ndim != 2 or y.shape != (z.shape[0],) or z.shape[0] == 0:
        raise ValueError(f"need logits [N, C] and labels [N] with N > 0, got {z.shape} and {y.shape}")
    n, c = z.shape
    if y.min() < 0 or y.max() >= c:
        raise ValueError(f"labels must be in 0..{c - 1}")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits must be finite")
    lam: float | np.ndarray  # Gaussian prior precision 1 / σ² on each bias b_c: a scalar, or [C]
    if bias_prior_std is None:
        lam = 0.0
        missing = np.flatnonzero(np.bincount(y, minlength=c) == 0)
        if missing.size:
            raise ValueError(
                f"classes {missing[:10].tolist()} have no labelled sample: their maximum-likelihood bias is "
                "-inf; pass bias_prior_std > 0"
            )
    else:
        sigma = np.broadcast_to(np.asarray(bias_prior_std, dtype=np.float64), (c,))
        if not (np.all(np.isfinite(sigma)) and np.all(sigma > 0)):
            raise ValueError(f"bias_prior_std must be finite numbers > 0 or None, got {bias_prior_std}")
        lam = 1.0 / sigma**2  # [C]
    beta_lo, beta_hi = 1.0 / bounds[1], 1.0 / bounds[0]
    onehot = np.zeros((n, c))
    onehot[np.arange(n), y] = 1.0
    z_true = z[np.arange(n), y]  # [N]

    def objective(beta: float, b: np.ndarray) -> float:
        a = beta * z + b  # [N, C]
        m = a.max(axis=1)
        lse = m + np.log(np.exp(a - m[:, None]).sum(axis=1))
        return float(np.sum(lse - beta * z_true - b[y]) + 0.5 * np.sum(lam * b * b) + 0.5 * b.sum() ** 2)

    beta = float(np.clip(1.0, beta_lo, beta_hi))
    b = np.zeros(c)
    value = objective(beta, b)
    for _ in range(max_iter):
        p = softmax(beta * z + b)  # [N, C]
        resid = p - onehot  # [N, C]
        ez = np.sum(p * z, axis=1)  # [N] E_p[z]
        grad = np.empty(c + 1)
        grad[0] = np.sum(resid * z)
        grad[1:] = resid.sum(axis=0) + lam * b + b.sum()
        hess = np.empty((c + 1, c + 1))
        hess[0, 0] = np.sum(p * z * z) - ez @ ez  # Σ_i Var_p(z_i)
        hess[0, 1:] = hess[1:, 0] = np.sum(p * z, axis=0) - p.T @ ez  # Σ_i Cov_p(z_i, e_c)
        hess[1:, 1:] = np.diag(p.sum(axis=0) + lam) - p.T @ p + 1.0  # + gauge 11ᵀ
        free = np.ones(c + 1, dtype=bool)
        # β at a bound with the gradient pushing outwards: hold it there and step in b only.
        if (beta <= beta_lo and grad[0] > 0) or (beta >= beta_hi and grad[0] < 0):
            free[0] = False
        step = np.zeros(c + 1)
        step[free] = np.linalg.solve(hess[np.ix_(free, free)], grad[free])
        decrement = float(grad @ step)
        if decrement / (2 * n) < tol:
            break
        t = 1.0
        while True:
            new_beta = float(np.clip(beta - t * step[0], beta_lo, beta_hi))
            new_b = b - t * step[1:]
            new_value = objective(new_beta, new_b)
            if new_value <= value - 0.25 * t * decrement or t < 1e-12:
                break
            t *= 0.5
        if new_value > value:  # no descent left at machine precision
            break
        beta, b, value = new_beta, new_b, new_value
    return float(1.0 / beta), b - b.mean()


def em_prior(
    logits: np.ndarray,
    temperature: float = 1.0,
    source_prior: ArrayLike | None = None,
    init: ArrayLike | None = None,
    dirichlet_alpha: float | ArrayLike = 1.0,
    max_iter: int = 100,
    tol: float = 1e-6,
    class_bias: ArrayLike | None = None,
) -> tuple[np.ndarray, int]:
    """Estimate the deployment label prior ``π_t`` from unlabelled logits by EM (Saerens et al. 2002).

    E-step: ``q_ic ∝ (π_c / π_s,c) · p_s(c | x_i)`` with ``p_s = softmax(z / T + b)`` (:func:`calibrate_logits`);
    for a Balanced-Softmax model the source prior ``π_s`` is uniform, which gives ``q_ic ∝ π_c · exp(z_ic / T +
    b_c)``. EM is only as good as ``p_s`` is calibrated per class: with a model whose ``softmax(z / T)``
    over-predicts some classes, EM shifts ``π`` towards them even without label shift, which is what the
    bias ``b`` of :func:`fit_bias_corrected_temperature` corrects (Alexandari et al. 2020).
    M-step with a symmetric or per-class Dirichlet(α) prior (MAP):
    ``π_c = (Σ_i q_ic + α_c − 1) / (N + Σ_c α_c − C)``. ``α = 1`` is the plain maximum-likelihood step;
    ``α > 1`` keeps small windows from collapsing a class to 0.

    Args:
        logits: ``[N, C]`` raw logits of N unlabelled samples.
        temperature: ``T`` applied before the softmax.
        source_prior: ``π_s`` the model's posteriors are calibrated for (``None`` = uniform).
        init: starting ``π`` (``None`` = uniform).
        dirichlet_alpha: ``α`` (scalar or ``[C]``), each ``>= 1``.
        max_iter: iteration cap.
        tol: stop when ``‖π^{t+1} − π^t‖₁ < tol``.
        class_bias: per-class bias ``b`` ``[C]`` added after the temperature (``None`` = 0).

    Returns:
        ``(π_t [C], iterations)``.
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] == 0:
        raise ValueError(f"need logits [N, C] with N > 0, got shape {z.shape}")
    n, c = z.shape
    alpha = np.broadcast_to(np.asarray(dirichlet_alpha, dtype=np.float64), (c,))
    if np.any(alpha < 1):
        raise ValueError("dirichlet_alpha must be >= 1 for every class")
    log_ps = log_softmax(calibrate_logits(z, temperature, class_bias))  # [N, C]
    if source_prior is not None:
        log_ps = log_ps - log_prior(source_prior, eps=1e-12)
    pi = np.full(c, 1.0 / c) if init is None else normalize_prior(init, c)
    denom = n + alpha.sum() - c
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 (reported to the caller)
        q = softmax(log_ps + log_prior(pi, eps=1e-300))  # [N, C]
        new_pi = (q.sum(axis=0) + alpha - 1.0) / denom
        new_pi = np.clip(new_pi, 0.0, None)
        new_pi /= new_pi.sum()
        delta = float(np.abs(new_pi - pi).sum())
        pi = new_pi
        if delta < tol:
            break
    return pi, it


#: Calibration fits :func:`fit_calibration_for_split` knows (``auto`` picks one from the validation counts).
CALIBRATION_FITS = ("auto", "bcts", "bcts_count", "temperature")
#: From this many validation images in the rarest class up, ``auto`` scales each class's bias prior by its
#: count (``bcts_count``); below, it keeps one ``σ`` (``bcts``). Measured by ``benchmarks/label_shift.py``
#: (docs/evaluation.md): with 3 or 5 images per class a single ``T`` (``b = 0``) lost 3 points of top-1 to BCTS
#: on a weak model, and ``bcts`` beat ``bcts_count`` there; with 10 per class ``bcts_count`` was ahead.
SMALL_VAL_PER_CLASS = 10


def count_scaled_bias_std(val_counts: ArrayLike, sigma: float = 1.0, n_ref: int = 20) -> np.ndarray:
    """Per-class ``σ_c = σ · sqrt(min(1, n_c / n_ref))``: the width of the Gaussian prior on ``b_c``.

    A class with few validation images ``n_c`` gets a tighter prior on its bias ``b_c`` (``[C]``), so a
    handful of images cannot move it far.
    """
    counts = np.asarray(val_counts, dtype=np.float64)
    return sigma * np.sqrt(np.clip(counts / float(n_ref), 1e-3, 1.0))


def fit_calibration_for_split(
    logits: np.ndarray, labels: np.ndarray, fit: str = "auto", sigma: float = 1.0
) -> tuple[float, np.ndarray | None, str]:
    """Fit ``T`` (and ``b``) on a labelled split with a method suited to its size.

    Args:
        logits: ``[N, C]`` raw validation logits.
        labels: ``[N]``.
        fit: ``bcts`` (one ``σ``), ``bcts_count`` (``σ_c`` by :func:`count_scaled_bias_std`), ``temperature``
            (``b = 0``), or ``auto``: ``bcts`` when the rarest class has fewer than :data:`SMALL_VAL_PER_CLASS`
            validation images, else ``bcts_count``.
        sigma: ``σ`` of the bias prior.

    Returns:
        ``(T, b or None, fit used)``.
    """
    if fit not in CALIBRATION_FITS:
        raise ValueError(f"calibration fit must be one of {', '.join(CALIBRATION_FITS)}, got {fit!r}")
    z = np.asarray(logits, dtype=np.float64)
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=z.shape[1])
    if fit == "auto":
        fit = "bcts" if counts.min() < SMALL_VAL_PER_CLASS else "bcts_count"
    if fit == "temperature":
        return fit_temperature(z, labels), None, fit
    std = count_scaled_bias_std(counts, sigma) if fit == "bcts_count" else sigma
    t, b = fit_bias_corrected_temperature(z, labels, bias_prior_std=std)
    return t, b, fit
