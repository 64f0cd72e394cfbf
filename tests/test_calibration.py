"""rescom.calibration (numpy only): every function against hand computations or known ground truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rescom import calibration as cal


def test_softmax_and_log_softmax_are_stable_and_exact():
    z = np.array([[1000.0, 1001.0, 999.0], [-1e4, 0.0, -1e4], [0.0, 0.0, 0.0]])
    p = cal.softmax(z)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    e = np.exp([0.0, 1.0, -1.0])
    np.testing.assert_allclose(p[0], e / e.sum(), rtol=1e-12)
    np.testing.assert_allclose(p[2], [1 / 3] * 3, rtol=1e-12)
    np.testing.assert_allclose(
        cal.log_softmax(z)[1], [-1e4, 0.0, -1e4], atol=1e-9
    )  # exact where p underflows
    np.testing.assert_allclose(cal.log_softmax(z)[0], np.log(p[0]), atol=1e-12)
    np.testing.assert_allclose(cal.softmax(z.T, axis=0), p.T, rtol=1e-12)
    masked = cal.softmax(np.array([[0.0, -np.inf, 1.0]]))
    assert masked[0, 1] == 0.0 and math.isclose(masked[0].sum(), 1.0)
    with pytest.raises(ValueError, match="finite"):
        cal.log_softmax(np.array([[-np.inf, -np.inf]]))


def test_prior_from_counts_and_validation():
    np.testing.assert_allclose(cal.prior_from_counts([3, 1, 0, 4]), [0.375, 0.125, 0.0, 0.5])
    for bad in ([], [[1, 2]], [1, -1], [0, 0], [1, float("nan")]):
        with pytest.raises(ValueError):
            cal.prior_from_counts(bad)


def test_normalize_prior_forms_and_errors():
    names = ["cat", "dog", "emu"]
    np.testing.assert_allclose(cal.normalize_prior([1, 1, 2], 3), [0.25, 0.25, 0.5])
    np.testing.assert_allclose(cal.normalize_prior({"dog": 3, "emu": 1}, 3, names), [0, 0.75, 0.25])
    np.testing.assert_allclose(cal.normalize_prior({"0": 1, 2: 3}, 3, names), [0.25, 0, 0.75])
    with pytest.raises(ValueError, match="3 classes"):
        cal.normalize_prior([1, 2], 3)
    with pytest.raises(ValueError, match="finite and >= 0"):
        cal.normalize_prior({"cat": -1}, 3, names)
    with pytest.raises(ValueError, match="finite and >= 0"):
        cal.normalize_prior([1, float("nan"), 1], 3)
    with pytest.raises(ValueError, match="finite and >= 0"):
        cal.normalize_prior([1, float("inf"), 1], 3)
    with pytest.raises(ValueError, match="unknown class 'yak'"):
        cal.normalize_prior({"yak": 1}, 3, names)
    with pytest.raises(ValueError, match="out of range"):
        cal.normalize_prior({"7": 1}, 3, names)
    with pytest.raises(ValueError, match="all zero"):
        cal.normalize_prior([0, 0, 0], 3)
    with pytest.raises(ValueError, match="must be a number"):
        cal.normalize_prior({"cat": "lots"}, 3, names)
    with pytest.raises(ValueError, match="must be a number"):
        cal.normalize_prior([True, 1, 1], 3)


def test_log_prior_adjust_logits_and_calibrated_probs_match_the_formula():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 4))
    pi = np.array([0.5, 0.3, 0.2, 0.0])
    lp = cal.log_prior(pi)
    assert lp[3] == -np.inf and math.isclose(lp[0], math.log(0.5))
    assert np.isfinite(cal.log_prior(pi, eps=1e-9)).all()
    np.testing.assert_allclose(cal.adjust_logits(z, 2.0), z / 2.0)
    np.testing.assert_allclose(
        cal.adjust_logits(z, 2.0, pi[:3].tolist() + [1.0], 0.5)[:, :3], z[:, :3] / 2 + 0.5 * np.log(pi[:3])
    )
    p = cal.calibrated_probs(z, 1.5, pi)
    ref = np.exp(z / 1.5) * pi
    np.testing.assert_allclose(p, ref / ref.sum(1, keepdims=True), rtol=1e-10)
    assert np.all(p[:, 3] == 0.0)  # a zero-prior class is never predicted
    np.testing.assert_allclose(cal.calibrated_probs(z), cal.softmax(z))
    with pytest.raises(ValueError, match="temperature"):
        cal.adjust_logits(z, 0.0)
    with pytest.raises(ValueError, match="temperature"):
        cal.adjust_logits(z, float("nan"))
    with pytest.raises(ValueError, match="classes"):
        cal.adjust_logits(z, 1.0, [0.5, 0.5])


def test_nll_brier_and_ece_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.25, 0.25], [0.2, 0.2, 0.6]])
    labels = np.array([0, 2, 0, 1])
    nll = -(math.log(0.7) + math.log(0.3) + math.log(0.5) + math.log(0.2)) / 4
    assert math.isclose(cal.nll(probs, labels), nll, rel_tol=1e-12)
    brier = np.mean(
        [
            (0.3**2 + 0.2**2 + 0.1**2),
            (0.1**2 + 0.6**2 + 0.7**2),
            (0.5**2 + 0.25**2 + 0.25**2),
            (0.2**2 + 0.8**2 + 0.6**2),
        ]
    )
    assert math.isclose(cal.brier_score(probs, labels), brier, rel_tol=1e-12)
    # Two bins on [0, 1]: confidences 0.7, 0.6, 0.5 | 0.6 -> bin edges 0, 0.5, 1 (right-closed).
    # bin 0 (conf <= 0.5): sample 2 (conf 0.5, correct) -> |1 - 0.5| = 0.5, weight 1/4
    # bin 1 (conf > 0.5): samples 0 (0.7, right), 1 (0.6, wrong), 3 (0.6, wrong): acc 1/3, conf 1.9/3
    ece = 0.25 * 0.5 + 0.75 * abs(1 / 3 - 1.9 / 3)
    assert math.isclose(cal.expected_calibration_error(probs, labels, n_bins=2), ece, rel_tol=1e-12)
    bins = cal.reliability_bins(probs, labels, n_bins=2)
    np.testing.assert_allclose(bins["count"], [1, 3])
    np.testing.assert_allclose(bins["edges"], [0, 0.5, 1])
    np.testing.assert_allclose(bins["accuracy"], [1.0, 1 / 3])
    assert np.isnan(cal.reliability_bins(probs, labels, n_bins=10)["confidence"][0])  # empty bin


def test_perfect_calibration_has_zero_ece():
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert cal.expected_calibration_error(probs, np.array([0, 1])) == 0.0
    assert cal.nll(probs, np.array([0, 1])) < 1e-10


def _sample(n: int, c: int, true_t: float, prior: np.ndarray, rng: np.random.Generator):
    """Logits z and labels drawn so that softmax(z / true_t + log prior) is the true posterior."""
    z = rng.normal(0.0, 3.0, size=(n, c))
    p = cal.calibrated_probs(z, true_t, prior)
    u = rng.random((n, 1))
    labels = np.minimum((p.cumsum(axis=1) < u).sum(axis=1), c - 1)
    return z, labels


def test_fit_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(1)
    for true_t in (0.7, 2.5):
        z, y = _sample(20_000, 10, true_t, np.full(10, 0.1), rng)
        t = cal.fit_temperature(z, y)
        assert abs(t - true_t) / true_t < 0.05, (t, true_t)
        assert cal.nll(cal.softmax(z / t), y) <= cal.nll(cal.softmax(z / (1.2 * t)), y)
    assert cal.fit_temperature(np.array([[10.0, 0.0]] * 4), np.array([0, 0, 0, 0]), bounds=(0.1, 5)) == 0.1
    with pytest.raises(ValueError):
        cal.fit_temperature(np.zeros((3, 2)), np.array([0, 2, 1]))
    with pytest.raises(ValueError):
        cal.fit_temperature(np.zeros((0, 2)), np.zeros(0))


def test_em_prior_recovers_a_shifted_prior():
    rng = np.random.default_rng(2)
    target = np.array([0.02, 0.03, 0.05, 0.1, 0.5, 0.3])
    # A Balanced-Softmax model: logits are calibrated under the uniform prior; the deployment draws from target.
    # Class c shifts z_c by +mu (unit Gaussian noise), so the true posterior under a uniform prior is softmax(mu z):
    # the calibrated logits are mu * z.
    labels = rng.choice(6, size=6000, p=target)
    z = rng.normal(0.0, 1.0, size=(6000, 6))
    z[np.arange(6000), labels] += 3.0
    z *= 3.0
    pi, iterations = cal.em_prior(z, temperature=1.0, dirichlet_alpha=1.0, max_iter=500, tol=1e-9)
    assert 1 < iterations <= 500
    np.testing.assert_allclose(pi.sum(), 1.0)
    assert np.abs(pi - target).max() < 0.03, pi
    # Warm start converges in fewer steps to the same answer.
    pi2, it2 = cal.em_prior(z, init=pi, dirichlet_alpha=1.0, max_iter=500, tol=1e-9)
    np.testing.assert_allclose(pi2, pi, atol=1e-6)
    assert it2 < iterations
    # A larger Dirichlet alpha pulls a tiny window towards uniform and keeps every class above 0.
    few = z[:20]
    ml, _ = cal.em_prior(few, dirichlet_alpha=1.0)
    smooth, _ = cal.em_prior(few, dirichlet_alpha=5.0)
    assert smooth.min() > 0.0 and smooth.min() >= ml.min()
    assert np.abs(smooth - 1 / 6).max() < np.abs(ml - 1 / 6).max()
    # MAP formula by hand for one step from uniform: (sum_i q_ic + a - 1) / (N + C (a - 1)).
    one, _ = cal.em_prior(few, dirichlet_alpha=3.0, max_iter=1)
    q = cal.softmax(few)
    np.testing.assert_allclose(one, (q.sum(0) + 2.0) / (20 + 6 * 2.0), rtol=1e-10)
    with pytest.raises(ValueError, match="dirichlet_alpha"):
        cal.em_prior(z, dirichlet_alpha=0.5)
    with pytest.raises(ValueError):
        cal.em_prior(np.zeros((0, 3)))


def test_em_prior_with_a_source_prior_undoes_it():
    rng = np.random.default_rng(3)
    source = np.array([0.6, 0.3, 0.1])
    target = np.array([0.2, 0.3, 0.5])
    labels = rng.choice(3, size=8000, p=target)
    z = rng.normal(0.0, 1.0, size=(8000, 3))
    z[np.arange(8000), labels] += 2.5
    z *= 2.5  # calibrated under the uniform prior (see the test above)
    z_source = z + np.log(source)  # posteriors calibrated for the source prior
    pi, _ = cal.em_prior(z_source, source_prior=source, dirichlet_alpha=1.0, max_iter=500, tol=1e-9)
    assert np.abs(pi - target).max() < 0.03, pi


# --- bias-corrected temperature scaling (BCTS) --------------------------------------------------------------------


def _bcts_objective(z: np.ndarray, y: np.ndarray, beta: float, b: np.ndarray, sigma: float | None) -> float:
    """Σ_i −log softmax(β z_i + b)_{y_i} + ‖b‖² / (2σ²), written out."""
    a = beta * z + b
    lse = np.log(np.exp(a - a.max(1, keepdims=True)).sum(1)) + a.max(1)
    penalty = 0.0 if sigma is None else float(b @ b) / (2 * sigma**2)
    return float(np.sum(lse - a[np.arange(len(y)), y]) + penalty)


def test_bcts_recovers_a_known_temperature_and_bias():
    rng = np.random.default_rng(4)
    true_t, true_b = 1.6, np.array([0.8, -0.5, 0.0, 0.6, -0.9])
    # labels ~ softmax(z / T + b): the calibrated posterior is known (log prior = b up to a constant)
    z, y = _sample(40_000, 5, true_t, cal.softmax(true_b), rng)
    t, b = cal.fit_bias_corrected_temperature(z, y, bias_prior_std=None)
    assert abs(t - true_t) / true_t < 0.03, t
    np.testing.assert_allclose(b, true_b - true_b.mean(), atol=0.05)
    assert abs(b.sum()) < 1e-9
    # the Gaussian prior on b is negligible with 40k samples
    t1, b1 = cal.fit_bias_corrected_temperature(z, y, bias_prior_std=1.0)
    assert abs(t1 - t) < 1e-3 and np.abs(b1 - b).max() < 5e-3


def test_bcts_matches_a_brute_force_grid_search():
    rng = np.random.default_rng(5)
    # two classes: b = (c, −c); minimise the penalised NLL over a fine (β, c) grid
    z = rng.normal(0.0, 2.0, size=(300, 2))
    y = (rng.random(300) < cal.softmax(z / 0.8 + np.array([0.7, -0.7]))[:, 1]).astype(int)
    sign = np.where(y == 0, 1.0, -1.0)  # b_y = sign · c
    betas, cs = np.linspace(0.6, 2.0, 281), np.linspace(-1.5, 1.5, 301)  # steps 0.005, 0.01
    for sigma in (0.5, None):
        t, b = cal.fit_bias_corrected_temperature(z, y, bias_prior_std=sigma)
        penalty = 0.0 if sigma is None else cs**2 / sigma**2  # ‖(c, −c)‖² / (2σ²)
        grid = np.empty((betas.size, cs.size))
        for i, beta in enumerate(betas):  # Σ_i logaddexp(β z_i0 + c, β z_i1 − c) − (β z_iy + b_y)
            a0, a1 = beta * z[:, :1] + cs, beta * z[:, 1:] - cs  # [N, K]
            true = beta * z[np.arange(300), y][:, None] + sign[:, None] * cs
            grid[i] = np.sum(np.logaddexp(a0, a1) - true, axis=0) + penalty
        i, j = np.unravel_index(grid.argmin(), grid.shape)
        assert abs(1 / t - betas[i]) <= 0.005 and abs(b[0] - cs[j]) <= 0.01, (1 / t, b, betas[i], cs[j])
        assert b[1] == pytest.approx(-b[0], abs=1e-12)
        assert _bcts_objective(z, y, 1 / t, b, sigma) <= grid.min() + 1e-9
        assert _bcts_objective(z, y, betas[i], np.array([cs[j], -cs[j]]), sigma) == pytest.approx(grid.min())


def test_bcts_stationarity_makes_em_unbiased_on_its_own_split():
    # A model that over-predicts class 0 and under-predicts class 2 on a balanced split: temperature scaling
    # cannot fix it, so EM "finds" a label shift that is not there; with b fitted by maximum likelihood the mean
    # posterior equals the label histogram (dL/db = 0), so uniform is EM's fixed point on this split.
    rng = np.random.default_rng(6)
    y = np.repeat(np.arange(4), 300)
    z = rng.normal(0.0, 1.0, size=(1200, 4))
    z[np.arange(1200), y] += 2.0
    z += np.array([0.8, 0.0, -0.8, 0.0])
    t_ts = cal.fit_temperature(z, y)
    pi_ts, _ = cal.em_prior(z, t_ts, dirichlet_alpha=1.0, max_iter=1000, tol=1e-12)
    assert np.abs(pi_ts - 0.25).max() > 0.05
    t, b = cal.fit_bias_corrected_temperature(z, y, bias_prior_std=None)
    probs = cal.calibrated_probs(z, t, class_bias=b)
    np.testing.assert_allclose(probs.mean(axis=0), 0.25, atol=1e-8)
    pi, _ = cal.em_prior(z, t, dirichlet_alpha=1.0, max_iter=1000, tol=1e-12, class_bias=b)
    np.testing.assert_allclose(pi, 0.25, atol=1e-6)
    assert b[0] < 0 < b[2]
    # the fit beats temperature scaling in NLL on its own data, and is deterministic
    assert cal.nll(probs, y) < cal.nll(cal.softmax(z / t_ts), y)
    t2, b2 = cal.fit_bias_corrected_temperature(z, y, bias_prior_std=None)
    assert t2 == t and np.array_equal(b2, b)


def test_bcts_with_a_strong_bias_prior_is_temperature_scaling():
    rng = np.random.default_rng(7)
    z, y = _sample(3000, 6, 2.0, np.full(6, 1 / 6), rng)
    t, b = cal.fit_bias_corrected_temperature(z, y, bias_prior_std=1e-6)
    assert t == pytest.approx(cal.fit_temperature(z, y), rel=1e-5)
    assert np.abs(b).max() < 1e-6


def test_bcts_input_checks_and_bounds():
    with pytest.raises(ValueError, match="no labelled sample"):
        cal.fit_bias_corrected_temperature(np.zeros((4, 3)), np.array([0, 1, 0, 1]), bias_prior_std=None)
    with pytest.raises(ValueError, match="bias_prior_std"):
        cal.fit_bias_corrected_temperature(np.zeros((4, 3)), np.array([0, 1, 2, 1]), bias_prior_std=0.0)
    with pytest.raises(ValueError, match="labels"):
        cal.fit_bias_corrected_temperature(np.zeros((3, 2)), np.array([0, 2, 1]))
    with pytest.raises(ValueError, match="finite"):
        cal.fit_bias_corrected_temperature(np.full((2, 2), np.nan), np.array([0, 1]))
    # separable data: T heads for 0 and stays within the bounds; a class missing from the split gets b < 0
    z = np.array([[10.0, 0.0, 0.0], [0.0, 10.0, 0.0]] * 3)
    t, b = cal.fit_bias_corrected_temperature(z, np.array([0, 1] * 3), bounds=(0.1, 5.0))
    assert 0.1 <= t < 1.0 and b[2] < b[0] and b[2] < b[1]


def test_calibrate_logits_and_the_class_bias_everywhere():
    z = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    b = np.array([0.3, -0.1, -0.2])
    np.testing.assert_allclose(cal.calibrate_logits(z, 2.0, b), z / 2.0 + b)
    np.testing.assert_allclose(cal.calibrate_logits(z, 2.0), z / 2.0)
    pi = np.array([0.5, 0.3, 0.2])
    np.testing.assert_allclose(cal.adjust_logits(z, 2.0, pi, class_bias=b), z / 2.0 + b + np.log(pi))
    np.testing.assert_allclose(
        cal.calibrated_probs(z, 2.0, pi, class_bias=b), cal.softmax(z / 2 + b + np.log(pi))
    )
    em_b, _ = cal.em_prior(z, 2.0, class_bias=b, dirichlet_alpha=1.0, max_iter=50)
    em_a, _ = cal.em_prior(z / 2.0 + b, 1.0, dirichlet_alpha=1.0, max_iter=50)
    np.testing.assert_allclose(em_b, em_a, atol=1e-12)
    with pytest.raises(ValueError, match="class_bias"):
        cal.calibrate_logits(z, 1.0, [0.0, 0.0])
    with pytest.raises(ValueError, match="temperature"):
        cal.calibrate_logits(z, -1.0, b)


def test_parse_class_bias_validates_the_metadata_value():
    assert cal.parse_class_bias(None, 3) is None
    assert cal.parse_class_bias([0, 0.0, 0], 3) is None  # zeros: plain temperature scaling
    np.testing.assert_array_equal(cal.parse_class_bias([0.5, -0.25, 0], 3), [0.5, -0.25, 0.0])
    for bad, message in (
        ([0.0, 1.0], "2 entries"),
        ([0.0, float("inf"), 0.0], "finite"),
        ([0.0, "1", 0.0], "number"),
        ([0.0, True, 0.0], "number"),
        ("0,0,0", "list"),
        ({"0": 1.0}, "list"),
    ):
        with pytest.raises(ValueError, match=message):
            cal.parse_class_bias(bad, 3)
