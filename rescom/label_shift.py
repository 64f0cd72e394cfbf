"""Label-shift estimators that know their inputs are imperfect: numpy + stdlib only (the service imports it).

A deployment's label prior ``π_t`` is estimated from a window of N unlabelled logits ``z``. Every estimator
works on the calibrated source posteriors ``p_s(c | x) = softmax(z / T + b)`` (uniform source prior for a
Balanced-Softmax model; :func:`rescom.calibration.calibrate_logits`):

- ``em``: maximum likelihood by EM (Saerens, Latinne & Decaestecker 2002; :func:`rescom.calibration.em_prior`),
  symmetric Dirichlet(α) M-step. Unbiased only when ``p_s`` is calibrated per class.
- ``map_em``: EM with a Dirichlet prior centred on a reference prior ``π_ref`` (the training prior by default)
  with concentration κ: ``π_c = (Σ_i q_ic + κ π_ref,c) / (N + κ)``. The estimate is shrunk toward ``π_ref`` by
  the amount of evidence: a window of N ≪ κ images stays near ``π_ref``, N ≫ κ follows the data.
- ``bbse``: black-box shift estimation (Lipton, Wang & Smola 2018), soft-confusion variant: with
  ``M[i, j] = E_s[p_s(ŷ = i | x) | y = j]`` measured on the labelled validation split
  (:func:`soft_confusion`), the mean soft prediction over the window is ``q̂ = M π_t``, solved by least
  squares and projected onto the simplex. Needs no per-class calibration, only ``p(x | y)`` unchanged,
  but is as noisy as ``M`` is (few validation images per class).
- ``rlls``: regularised learning under label shift (Azizzadenesheli et al. 2019), ridge form:
  ``argmin_π ‖M π − q̂‖² + λ ‖π − π_ref‖²`` with ``λ = rlls_strength · C · (1 / N + 1 / n_val)`` (the
  variance of ``q̂`` and ``M``), projected onto the simplex.

Any of them can be **guarded** (:func:`guarded_estimate`): the window (oldest first) is split in time; the
estimate fitted on the older half is scored by the marginal log-likelihood ``Σ_i log Σ_c p_s(c | x_i) π_c`` of
the newer half, next to the fixed priors (uniform, training). When the estimate does not beat the better fixed
prior on held-out data by a margin (:data:`GUARD_MARGIN` · (C − 1) / (2 N) nats per image), the better fixed
prior is returned instead: an estimate may be less precise than a
fixed prior, but the guard keeps it from being worse by the model's own likelihood, and from following a
class mix that has already moved on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rescom.calibration import calibrate_logits, em_prior, log_prior, log_softmax, softmax

__all__ = [
    "ESTIMATORS",
    "DEFAULT_ESTIMATOR",
    "FALLBACK_ESTIMATOR",
    "ShiftEstimate",
    "parse_estimator",
    "soft_confusion",
    "parse_confusion",
    "marginal_log_likelihood",
    "map_em_prior",
    "bbse_prior",
    "rlls_prior",
    "project_to_simplex",
    "estimate_prior",
    "guarded_estimate",
]

ESTIMATORS = ("em", "map_em", "bbse", "rlls")
#: Chosen by ``benchmarks/label_shift.py`` (docs/evaluation.md): guarded EM met the target in as many cells as
#: the best confusion estimator and needs nothing but the window (no validation confusion matrix).
DEFAULT_ESTIMATOR = "em+guard"
#: What runs instead of ``bbse`` / ``rlls`` for a model without ``calibration.confusion``.
FALLBACK_ESTIMATOR = "em+guard"
CONFUSION_ESTIMATORS = ("bbse", "rlls")
#: Scale of the guard's margin ``(C − 1) / (2 N)`` nats per held-out image. Measured by
#: ``benchmarks/label_shift.py`` on a weak digits-LT IF-100 model (docs/evaluation.md): 0, 1 and 4 met the
#: target in 6, 6 and 11 of 21 cells for ``em+guard``; 4 it is.
GUARD_MARGIN = 4.0
#: A guarded estimator trusts no estimate from fewer images than this (or 2·C): it keeps a fixed prior.
MIN_GUARD_WINDOW = 16


@dataclass(frozen=True)
class ShiftEstimate:
    """One estimate of ``π_t``.

    Attributes:
        prior: ``[C]`` summing to 1.
        method: the estimator that produced ``prior`` (``"uniform"`` / ``"train"`` when the guard fell back).
        requested: the estimator asked for (e.g. ``"map_em+guard"``).
        scores: held-out mean marginal log-likelihood per candidate (guarded estimates only).
        iterations: EM iterations (0 for the closed-form estimators).
    """

    prior: np.ndarray
    method: str
    requested: str
    scores: Mapping[str, float] = field(default_factory=dict)
    iterations: int = 0


def parse_estimator(name: str) -> tuple[str, bool]:
    """``"map_em+guard"`` -> ``("map_em", True)``; raises ``ValueError`` naming the allowed values."""
    text = str(name).strip().lower()
    base, _, suffix = text.partition("+")
    if base not in ESTIMATORS or suffix not in ("", "guard"):
        allowed = ", ".join(ESTIMATORS)
        raise ValueError(f"label-shift estimator {name!r} is not one of {allowed} (optionally with '+guard')")
    return base, suffix == "guard"


def soft_confusion(
    logits: np.ndarray,
    labels: np.ndarray,
    num_classes: int | None = None,
    temperature: float = 1.0,
    class_bias: np.ndarray | None = None,
) -> np.ndarray:
    """Soft confusion matrix ``M`` ``[C, C]`` with ``M[i, j] = mean_{x: y = j} p_s(ŷ = i | x)``.

    ``p_s = softmax(z / T + b)`` (uniform source prior). Each column sums to 1 and does not depend on how many
    validation images a class has. A class without validation images gets the column ``e_j`` (assumed
    recognised perfectly: the estimators then treat it like EM would).

    This is what export records as ``calibration.confusion`` in ``rescom.json`` (as ``C`` rows, row ``i`` =
    predicted class ``i``) with ``calibration.val_counts``, so the service can run ``bbse`` / ``rlls``.
    """
    z = np.asarray(logits, dtype=np.float64)  # [N, C]
    y = np.asarray(labels, dtype=np.int64)  # [N]
    c = z.shape[1] if num_classes is None else int(num_classes)
    if z.ndim != 2 or z.shape != (len(y), c):
        raise ValueError(f"need logits [N, {c}] and labels [N], got {z.shape} and {y.shape}")
    probs = softmax(calibrate_logits(z, temperature, class_bias))  # [N, C]
    sums = np.zeros((c, c))
    np.add.at(sums, y, probs)  # sums[j] = Σ_{y=j} p(· | x)
    counts = np.bincount(y, minlength=c).astype(np.float64)  # [C]
    m = np.eye(c)
    seen = counts > 0
    m[:, seen] = (sums[seen] / counts[seen, None]).T
    return m


def parse_confusion(value: object, num_classes: int) -> np.ndarray | None:
    """Validate ``calibration.confusion`` (``C`` rows of ``C`` finite non-negative numbers); ``None`` passes."""
    if value is None:
        return None
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"confusion must be {num_classes} lists of {num_classes} numbers") from None
    if m.shape != (num_classes, num_classes) or not np.all(np.isfinite(m)) or np.any(m < 0):
        raise ValueError(f"confusion must be {num_classes}x{num_classes} finite numbers >= 0, got {m.shape}")
    return m


def _log_source_posteriors(
    logits: np.ndarray, temperature: float, class_bias: np.ndarray | None
) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] == 0:
        raise ValueError(f"need logits [N, C] with N > 0, got shape {z.shape}")
    return log_softmax(calibrate_logits(z, temperature, class_bias))  # [N, C]


def marginal_log_likelihood(log_ps: np.ndarray, prior: np.ndarray) -> float:
    """Mean ``log Σ_c p_s(c | x_i) π_c`` over a window: higher is a better fit of ``π`` to unlabelled data.

    The source prior is uniform and the constant is dropped. ``log_ps``: ``[N, C]`` log source posteriors.
    """
    a = log_ps + log_prior(prior, eps=1e-12)  # [N, C]
    m = a.max(axis=1, keepdims=True)
    return float(np.mean(m[:, 0] + np.log(np.exp(a - m).sum(axis=1))))


def map_em_prior(
    log_ps: np.ndarray,
    reference: np.ndarray,
    strength: float,
    init: np.ndarray | None = None,
    max_iter: int = 200,
    tol: float = 1e-7,
) -> tuple[np.ndarray, int]:
    """EM with a Dirichlet(1 + κ π_ref) prior: ``π_c = (Σ_i q_ic + κ π_ref,c) / (N + κ)``.

    Args:
        log_ps: ``[N, C]`` log source posteriors (uniform source prior).
        reference: ``π_ref`` ``[C]`` (training prior by default in the service).
        strength: κ >= 0, in images: the window must hold about κ images before the data outweighs ``π_ref``.
        init: starting ``π`` (default ``π_ref``).
        max_iter: most EM iterations.
        tol: stop once the L1 change of ``π`` in one iteration is below this.

    Returns:
        ``(π [C], iterations)``.
    """
    n, c = log_ps.shape
    ref = np.asarray(reference, dtype=np.float64)
    ref = ref / ref.sum()
    pi = ref.copy() if init is None else np.asarray(init, dtype=np.float64) / np.sum(init)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 (reported to the caller)
        q = softmax(log_ps + log_prior(pi, eps=1e-300))  # [N, C]
        new_pi = (q.sum(axis=0) + strength * ref) / (n + strength)
        delta = float(np.abs(new_pi - pi).sum())
        pi = new_pi
        if delta < tol:
            break
    return pi, it


def project_to_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection of ``v`` ``[C]`` onto the probability simplex (Duchi et al. 2008)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u)
    k = np.arange(1, len(v) + 1)
    rho = np.nonzero(u * k > css - 1.0)[0][-1]
    theta = (css[rho] - 1.0) / (rho + 1.0)
    return np.maximum(v - theta, 0.0)


def bbse_prior(probs: np.ndarray, confusion: np.ndarray) -> np.ndarray:
    """BBSE (soft): least-squares ``M π = q̂`` with ``q̂`` the mean of ``probs`` ``[N, C]``, onto the simplex."""
    q = probs.mean(axis=0)  # [C]
    pi, *_ = np.linalg.lstsq(confusion, q, rcond=None)
    return project_to_simplex(pi)


def rlls_prior(
    probs: np.ndarray,
    confusion: np.ndarray,
    reference: np.ndarray,
    n_val: int,
    strength: float = 1.0,
) -> np.ndarray:
    """RLLS (ridge form): ``argmin ‖M π − q̂‖² + λ ‖π − π_ref‖²`` with ``λ = s · C · (1 / N + 1 / n_val)``."""
    n, c = probs.shape
    q = probs.mean(axis=0)  # [C]
    # ridge λ = noise / signal variance: q̂ entries have variance ~1/(C N), π entries spread ~1/C.
    lam = strength * c * (1.0 / n + 1.0 / max(int(n_val), 1))
    ref = np.asarray(reference, dtype=np.float64) / np.sum(reference)
    lhs = confusion.T @ confusion + lam * np.eye(c)
    rhs = confusion.T @ q + lam * ref
    return project_to_simplex(np.linalg.solve(lhs, rhs))


@dataclass(frozen=True)
class _Inputs:
    """What every estimator may need, besides the window."""

    train_prior: np.ndarray
    confusion: np.ndarray | None = None
    n_val: int = 0
    em_alpha: float = 2.0
    map_strength: float | None = None
    rlls_strength: float = 1.0


def _run(method: str, log_ps: np.ndarray, inputs: _Inputs, init: np.ndarray | None) -> tuple[np.ndarray, int]:
    c = log_ps.shape[1]
    if method == "em":
        # em_prior applies log_softmax again: a no-op on log-probabilities.
        return em_prior(log_ps, init=init, dirichlet_alpha=inputs.em_alpha, max_iter=200, tol=1e-7)
    if method == "map_em":
        kappa = 10.0 * c if inputs.map_strength is None else inputs.map_strength
        return map_em_prior(log_ps, inputs.train_prior, kappa, init=init)
    if inputs.confusion is None:
        raise ValueError(
            f"{method} needs the validation confusion matrix (calibration.confusion in rescom.json)"
        )
    probs = np.exp(log_ps)  # [N, C]
    if method == "bbse":
        pi = bbse_prior(probs, inputs.confusion)
    else:
        pi = rlls_prior(probs, inputs.confusion, inputs.train_prior, inputs.n_val, inputs.rlls_strength)
    # the simplex projection returns exact zeros (a class never predicted): one pseudo-image per class
    n = log_ps.shape[0]
    return (n * pi + 1.0) / (n + c), 0


def estimate_prior(
    logits: np.ndarray,
    train_prior: Sequence[float] | np.ndarray,
    estimator: str = DEFAULT_ESTIMATOR,
    temperature: float = 1.0,
    class_bias: np.ndarray | None = None,
    confusion: np.ndarray | None = None,
    n_val: int = 0,
    em_alpha: float = 2.0,
    map_strength: float | None = None,
    rlls_strength: float = 1.0,
    init: np.ndarray | None = None,
) -> ShiftEstimate:
    """Estimate ``π_t`` from a window of raw logits ``[N, C]`` with ``estimator`` (``name`` or ``name+guard``).

    Args:
        logits: ``[N, C]`` raw logits ``z`` of unlabelled images.
        train_prior: ``π_train`` ``[C]`` (reference of ``map_em`` / ``rlls``, fallback of the guard).
        estimator: one of :data:`ESTIMATORS`, optionally ``+guard`` (:func:`guarded_estimate`).
        temperature: the model's temperature ``T`` (``p_s = softmax(z / T + b)``).
        class_bias: the model's per-class bias ``b`` ``[C]`` (``None`` = 0).
        confusion: ``M`` ``[C, C]`` of :func:`soft_confusion` (``bbse`` / ``rlls`` only).
        n_val: validation images behind ``confusion``.
        em_alpha: symmetric Dirichlet α of ``em``.
        map_strength: κ of ``map_em`` in images (default ``10 · C``).
        rlls_strength: ``s`` of ``rlls``.
        init: warm start of the EM estimators.

    Raises:
        ValueError: unknown estimator, or a confusion estimator without ``confusion``.
    """
    method, guard = parse_estimator(estimator)
    log_ps = _log_source_posteriors(logits, temperature, class_bias)  # [N, C]
    c = log_ps.shape[1]
    inputs = _Inputs(
        train_prior=np.asarray(train_prior, dtype=np.float64) / np.sum(train_prior),
        confusion=confusion,
        n_val=n_val,
        em_alpha=em_alpha,
        map_strength=map_strength,
        rlls_strength=rlls_strength,
    )
    if inputs.train_prior.shape != (c,):
        raise ValueError(f"train_prior has {inputs.train_prior.shape} entries, logits have {c} classes")
    if guard:
        return guarded_estimate(
            log_ps, lambda part, start: _run(method, part, inputs, start), inputs, estimator, init
        )
    pi, iterations = _run(method, log_ps, inputs, init)
    return ShiftEstimate(pi, method, estimator, iterations=iterations)


def guarded_estimate(
    log_ps: np.ndarray,
    fit: Callable[[np.ndarray, np.ndarray | None], tuple[np.ndarray, int]],
    inputs: _Inputs,
    requested: str,
    init: np.ndarray | None = None,
) -> ShiftEstimate:
    """Prequential guard: keep the estimate only if, fitted on the past, it predicts the recent window best.

    The window (oldest first) is split in time: the estimate fitted on the older half is scored on the newer
    half by :func:`marginal_log_likelihood`, next to the uniform and the training prior. The estimate on the
    whole window is returned when its held-out score is the highest; otherwise the better fixed prior. A split
    in time (rather than at random) also catches a class mix that moves faster than the window: an estimate
    of the past that does not describe the present loses to a fixed prior.
    """
    n, c = log_ps.shape
    method = requested.partition("+")[0]
    fixed = {"uniform": np.full(c, 1.0 / c), "train": inputs.train_prior}
    if n < max(MIN_GUARD_WINDOW, 2 * c):  # too little to hold anything out: the better fixed prior
        scores = {name: marginal_log_likelihood(log_ps, prior) for name, prior in fixed.items()}
        best = max(scores, key=lambda k: scores[k])
        return ShiftEstimate(fixed[best].copy(), best, requested, scores=scores)
    older, newer = log_ps[: n // 2], log_ps[n // 2 :]
    pi_old, _ = fit(older, init)
    # the estimate has C - 1 free parameters: it must beat the fixed priors by GUARD_MARGIN times an AIC-like
    # (C - 1) / (2 N_newer) nats per image, so weak evidence (or a poorly calibrated model) keeps a fixed prior
    margin = GUARD_MARGIN * (c - 1) / (2 * len(newer))
    scores = {"estimate": marginal_log_likelihood(newer, pi_old) - margin}
    scores.update({name: marginal_log_likelihood(newer, prior) for name, prior in fixed.items()})
    best = max(scores, key=lambda k: scores[k])
    if best != "estimate":
        return ShiftEstimate(fixed[best].copy(), best, requested, scores=scores)
    pi, iterations = fit(log_ps, init)
    return ShiftEstimate(pi, method, requested, scores=scores, iterations=iterations)
