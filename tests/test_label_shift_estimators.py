"""Label-shift estimators (rescom.label_shift) on data whose true posteriors are known exactly."""

from __future__ import annotations

import numpy as np
import pytest

from rescom.calibration import (
    count_scaled_bias_std,
    fit_bias_corrected_temperature,
    fit_calibration_for_split,
)
from rescom.label_shift import (
    ESTIMATORS,
    estimate_prior,
    marginal_log_likelihood,
    parse_estimator,
    project_to_simplex,
    soft_confusion,
)

C = 5
MEANS = np.random.default_rng(123).normal(0, 1.6, (C, 8))  # class means mu_c in 8 dims


def gaussian_logits(counts: np.ndarray, seed: int, shuffle: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """x ~ N(mu_y, I); z_c = mu_c . x - |mu_c|^2 / 2, so softmax(z) is the exact uniform-prior posterior.
    The stream is shuffled (stationary) unless ``shuffle=False`` (class by class)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(C), counts)
    if shuffle:
        y = rng.permutation(y)
    x = MEANS[y] + rng.normal(size=(len(y), MEANS.shape[1]))
    z = x @ MEANS.T - 0.5 * np.sum(MEANS**2, axis=1)
    return z, y


def tv(p: np.ndarray, q: np.ndarray) -> float:
    return 0.5 * float(np.abs(p - q).sum())


TRAIN_PRIOR = np.array([0.5, 0.25, 0.13, 0.07, 0.05])
SHIFTED = np.array([600, 300, 50, 30, 20])


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_every_estimator_recovers_a_shifted_prior(estimator):
    val_z, val_y = gaussian_logits(np.full(C, 60), seed=1)
    z, y = gaussian_logits(SHIFTED, seed=2)
    truth = SHIFTED / SHIFTED.sum()
    est = estimate_prior(
        z, TRAIN_PRIOR, estimator, confusion=soft_confusion(val_z, val_y), n_val=len(val_y), map_strength=20
    )
    assert est.method == estimator
    assert np.isclose(est.prior.sum(), 1.0) and np.all(est.prior >= 0)
    assert tv(est.prior, truth) < 0.06, (estimator, est.prior, truth)
    assert tv(est.prior, truth) < tv(np.full(C, 1 / C), truth) / 4


def test_map_em_is_shrunk_toward_the_training_prior_by_the_window_size():
    z, _ = gaussian_logits(np.array([2, 2, 2, 2, 2]), seed=3)  # 10 uniform images
    small = estimate_prior(z, TRAIN_PRIOR, "map_em", map_strength=1000).prior
    free = estimate_prior(z, TRAIN_PRIOR, "map_em", map_strength=0).prior
    assert tv(small, TRAIN_PRIOR) < 0.02
    assert tv(free, TRAIN_PRIOR) > 0.2


def test_guard_keeps_a_good_estimate_and_reports_held_out_scores():
    z, _ = gaussian_logits(SHIFTED, seed=4)
    est = estimate_prior(z, np.full(C, 1 / C), "em+guard")
    assert est.method == "em" and est.requested == "em+guard"
    assert est.scores["estimate"] > max(est.scores["uniform"], est.scores["train"])


def test_guard_falls_back_when_the_class_mix_moved_on_and_on_tiny_windows():
    # class by class: the older half's estimate (classes 0-1) does not describe the newer half
    z, _ = gaussian_logits(np.full(C, 40), seed=12, shuffle=False)
    est = estimate_prior(z, TRAIN_PRIOR, "em+guard")
    assert est.method == "uniform" and np.allclose(est.prior, 1 / C)
    assert est.scores["estimate"] < est.scores["uniform"]
    assert estimate_prior(z, TRAIN_PRIOR, "em").method == "em"  # unguarded follows the window
    tiny = estimate_prior(z[:6], TRAIN_PRIOR, "map_em+guard")
    assert tiny.method in ("uniform", "train") and "estimate" not in tiny.scores


def test_guard_falls_back_to_the_better_fixed_prior_when_the_estimate_overfits():
    # a window drawn exactly from the training prior: a free estimate only adds noise on held-out data
    z, _ = gaussian_logits(np.array([10, 5, 3, 1, 1]), seed=5)
    prior = np.array([10, 5, 3, 1, 1]) / 20
    est = estimate_prior(z, prior, "em+guard", em_alpha=1.0)
    if est.method == "train":
        assert np.allclose(est.prior, prior)
    else:  # kept only when it beat both fixed priors on held-out data
        assert est.scores["estimate"] >= est.scores["train"]
    assert est.scores["train"] > est.scores["uniform"]


def test_confusion_estimators_need_the_matrix_and_names_are_checked():
    z, _ = gaussian_logits(SHIFTED, seed=6)
    with pytest.raises(ValueError, match="confusion"):
        estimate_prior(z, TRAIN_PRIOR, "bbse")
    with pytest.raises(ValueError, match="em, map_em, bbse, rlls"):
        parse_estimator("kmm")
    assert parse_estimator("RLLS+guard") == ("rlls", True)


def test_soft_confusion_columns_sum_to_one_and_missing_classes_get_identity():
    z, y = gaussian_logits(np.array([4, 4, 4, 4, 0]), seed=7)
    m = soft_confusion(z, y, num_classes=C)
    assert np.allclose(m.sum(axis=0), 1.0)
    assert np.allclose(m[:, 4], np.eye(C)[4])


def test_marginal_likelihood_prefers_the_true_prior_and_simplex_projection():
    z, _ = gaussian_logits(SHIFTED, seed=8)
    from rescom.calibration import log_softmax

    log_ps = log_softmax(z)
    assert marginal_log_likelihood(log_ps, SHIFTED / SHIFTED.sum()) > marginal_log_likelihood(
        log_ps, np.full(C, 1 / C)
    )
    p = project_to_simplex(np.array([0.8, 0.6, -0.3]))
    assert np.isclose(p.sum(), 1.0) and p.min() >= 0 and np.allclose(p, [0.6, 0.4, 0.0])


def test_per_class_bias_std_holds_rare_classes_near_zero():
    z, y = gaussian_logits(np.array([40, 40, 40, 40, 3]), seed=9)
    z = z + np.array([0, 0, 0, 0, 2.0])  # class 4 over-predicted by 2 logits
    std = count_scaled_bias_std(np.bincount(y), sigma=1.0, n_ref=20)
    assert std[4] < std[0] == 1.0
    _, b_one = fit_bias_corrected_temperature(z, y, bias_prior_std=1.0)
    _, b_count = fit_bias_corrected_temperature(z, y, bias_prior_std=std)
    assert abs(b_count[4] - b_count.mean()) < abs(b_one[4] - b_one.mean())


def test_auto_calibration_picks_the_bias_prior_by_validation_size():
    z, y = gaussian_logits(np.full(C, 3), seed=10)
    t, b, used = fit_calibration_for_split(z, y)
    assert used == "bcts" and b is not None and t > 0
    t, b, used = fit_calibration_for_split(z, y, fit="temperature")
    assert used == "temperature" and b is None and t > 0
    z, y = gaussian_logits(np.full(C, 30), seed=11)
    _, b, used = fit_calibration_for_split(z, y)
    assert used == "bcts_count" and b is not None and b.shape == (C,)
    with pytest.raises(ValueError, match="auto, bcts"):
        fit_calibration_for_split(z, y, fit="platt")


def test_service_adaptive_prior_runs_the_chosen_estimator_and_falls_back_without_a_confusion_matrix():
    import asyncio

    from service.priors import AdaptivePrior

    val_z, val_y = gaussian_logits(np.full(C, 40), seed=13)
    z, _ = gaussian_logits(SHIFTED, seed=14)
    plain = AdaptivePrior(
        C, 1.0, window=4096, update_every=8, estimator="rlls+guard", train_prior=TRAIN_PRIOR
    )
    assert plain.resolve() == "em+guard" and plain.resolve("bbse") == "em+guard"
    np.testing.assert_allclose(plain.current(), 1 / C)  # em starts uniform
    m = soft_confusion(val_z, val_y)
    ap = AdaptivePrior(
        C,
        1.0,
        window=4096,
        update_every=8,
        estimator="rlls+guard",
        train_prior=TRAIN_PRIOR,
        confusion=m,
        n_val=200,
    )
    np.testing.assert_allclose(ap.current(), TRAIN_PRIOR)  # rlls starts at pi_train
    ap.observe(z.astype(np.float32))
    pi = asyncio.run(ap.estimate())
    want = estimate_prior(z.astype(np.float32), TRAIN_PRIOR, "rlls+guard", confusion=m, n_val=200).prior
    np.testing.assert_allclose(pi, want, atol=1e-6)
    state = ap.snapshot()
    assert state["estimator"] == "rlls+guard" and state["estimator_used"] in ("rlls", "uniform", "train")
    em = asyncio.run(ap.estimate(estimator="em"))
    np.testing.assert_allclose(em, estimate_prior(z.astype(np.float32), TRAIN_PRIOR, "em").prior, atol=1e-6)
    assert asyncio.run(ap.estimate()) is pi  # the default's cached estimate is untouched
    with pytest.raises(ValueError, match="not one of"):
        asyncio.run(ap.estimate(estimator="oracle"))
