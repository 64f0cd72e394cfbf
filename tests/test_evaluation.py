"""Evaluation report and label-shift study: synthetic logits (fast) and a tiny exported digits model."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rescom.calibration import (
    calibrate_logits,
    em_prior,
    fit_bias_corrected_temperature,
    fit_temperature,
    log_softmax,
    softmax,
)
from rescom.evaluation import (
    evaluate_logits,
    label_shift_study,
    make_shifted_set,
    shifted_counts,
    shifted_prior,
)
from rescom.evaluation.report import posterior, top_confusions
from rescom.model_repository import METADATA_FILE

C, PER_CLASS = 10, 50
COUNTS = [int(100 * 20 ** (-i / 9)) for i in range(C)]  # digits-LT training counts: 100, 71, ..., 5
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic(
    per_class: int = PER_CLASS, signal: float = 2.5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Balanced test set; logits z = signal · onehot(y) + N(0, 1): softmax(z) is a uniform-prior posterior."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(C), per_class)  # [N]
    logits = rng.normal(0.0, 1.0, (labels.size, C))  # [N, C]
    logits[np.arange(labels.size), labels] += signal
    return logits, labels


# --- shift.py ---------------------------------------------------------------------------------------------------


def test_shifted_counts_follow_the_exponential_profile():
    available = np.full(C, PER_CLASS)
    forward = shifted_counts(available, "forward", 10)
    assert forward[0] == PER_CLASS and forward[-1] == PER_CLASS // 10
    assert np.all(np.diff(forward) <= 0)
    np.testing.assert_array_equal(shifted_counts(available, "backward", 10), forward[::-1])
    np.testing.assert_array_equal(shifted_counts(available, "uniform", 10), available)
    expected = np.maximum(1, np.floor(PER_CLASS * 10.0 ** (-np.arange(C) / (C - 1)) + 1e-9))
    np.testing.assert_array_equal(forward, expected)
    np.testing.assert_allclose(shifted_prior(C, "forward", 10)[0] / shifted_prior(C, "forward", 10)[-1], 10)


@pytest.mark.parametrize(("kind", "factor"), [("forward", 20), ("backward", 5), ("uniform", 1)])
def test_resampled_histogram_matches_the_target_prior(kind, factor):
    _, labels = synthetic()
    shifted = make_shifted_set(labels, kind, factor, seed=3)
    hist = np.bincount(labels[shifted.indices], minlength=C)
    np.testing.assert_array_equal(hist, shifted.counts)
    assert len(np.unique(shifted.indices)) == shifted.indices.size, "subsampling must be replacement-free"
    assert not shifted.with_replacement.any()
    np.testing.assert_array_equal(hist, shifted_counts(np.full(C, PER_CLASS), kind, factor))
    # the realised prior is the nominal one up to the floor() of each count
    assert np.abs(shifted.prior - shifted_prior(C, kind, factor)).max() < 0.02
    np.testing.assert_allclose(shifted.prior, hist / hist.sum())


def test_resampling_is_seeded():
    _, labels = synthetic()
    a, b = (make_shifted_set(labels, "forward", 10, seed=7) for _ in range(2))
    np.testing.assert_array_equal(a.indices, b.indices)
    c = make_shifted_set(labels, "forward", 10, seed=8)
    assert not np.array_equal(np.sort(a.indices), np.sort(c.indices))


def test_replacement_only_when_a_class_is_too_small():
    _, labels = synthetic(per_class=10)
    shifted = make_shifted_set(labels, "forward", 2, seed=0, n_max=15)
    assert shifted.with_replacement[0] and not shifted.with_replacement[-1]  # 15 > 10 images, 7 <= 10
    np.testing.assert_array_equal(np.bincount(labels[shifted.indices], minlength=C), shifted.counts)
    with pytest.raises(ValueError, match="without replacement"):
        make_shifted_set(labels, "forward", 2, seed=0, n_max=15, allow_replacement=False)


@pytest.mark.parametrize(
    ("kind", "factor", "message"), [("sideways", 10, "forward, uniform, backward"), ("forward", 0.5, ">= 1")]
)
def test_bad_shift_arguments_say_what_is_allowed(kind, factor, message):
    with pytest.raises(ValueError, match=message):
        shifted_counts([5] * C, kind, factor)


# --- report.py --------------------------------------------------------------------------------------------------


def test_report_numbers_match_hand_computation():
    logits, labels = synthetic(signal=1.5)
    t = 1.7
    r = evaluate_logits(logits, labels, COUNTS, t, many_threshold=50, shift_seeds=range(2), shift_factors=[5])
    pred = logits.argmax(1)
    assert r["longtail"]["uniform"]["acc"] == pytest.approx(100 * np.mean(pred == labels))
    per_class = [100 * np.mean(pred[labels == c] == c) for c in range(C)]
    assert r["longtail"]["uniform"]["per_class_acc"] == pytest.approx(per_class)
    many = [c for c in range(C) if COUNTS[c] > 50]
    assert r["longtail"]["uniform"]["many"] == pytest.approx(np.mean([per_class[c] for c in many]))
    # train prior with fitted T: argmax of z / T + log(n_c / N)
    shifted = logits / t + np.log(np.asarray(COUNTS) / sum(COUNTS))
    assert r["calibration"]["train"]["scaled"]["acc"] == pytest.approx(
        100 * np.mean(shifted.argmax(1) == labels)
    )
    nll_hand = -np.mean(log_softmax(shifted)[np.arange(labels.size), labels])
    assert r["calibration"]["train"]["scaled"]["nll"] == pytest.approx(nll_hand)
    nll_raw = -np.mean(log_softmax(logits)[np.arange(labels.size), labels])
    assert r["calibration"]["uniform"]["raw"]["nll"] == pytest.approx(nll_raw)
    pi_hat, _ = em_prior(logits, temperature=t, dirichlet_alpha=r["em_alpha"], max_iter=200, tol=1e-7)
    np.testing.assert_allclose(r["adaptive_prior"], pi_hat)
    for mode in ("raw", "scaled"):
        bins = r["reliability"]["uniform"][mode]
        assert sum(bins["count"]) == labels.size
    assert r["test_counts"] == [PER_CLASS] * C
    assert r["groups"] == {
        "many": len(many),
        "medium": sum(20 <= n <= 50 for n in COUNTS),
        "few": sum(n < 20 for n in COUNTS),
    }


def test_top_confusions_agree_with_the_full_matrix():
    logits, labels = synthetic(signal=1.0)
    pred = logits.argmax(1)
    matrix = np.zeros((C, C), dtype=int)
    np.add.at(matrix, (labels, pred), 1)
    np.fill_diagonal(matrix, 0)
    top = top_confusions(labels, pred, k=5)
    assert [p["count"] for p in top] == sorted(matrix.ravel(), reverse=True)[:5]
    for p in top:
        assert matrix[p["true"], p["pred"]] == p["count"]
        assert p["rate"] == pytest.approx(p["count"] / PER_CLASS)
    assert top_confusions(labels, labels, k=5) == []


def test_oracle_and_adaptive_beat_uniform_under_a_strong_forward_shift():
    logits, labels = synthetic(per_class=200, signal=2.0)
    train_prior = np.asarray(COUNTS) / sum(COUNTS)
    records = label_shift_study(
        logits, labels, train_prior, 1.0, kinds=["forward"], factors=[50], seeds=range(3)
    )
    for rec in records:
        m = rec["methods"]
        assert m["oracle"]["acc"] >= m["uniform"]["acc"]
        assert m["oracle"]["nll"] < m["uniform"]["nll"]
        assert m["adaptive"]["acc"] > m["uniform"]["acc"]
    # EM moves the prior most of the way from uniform to the truth (total-variation distance)
    truth = make_shifted_set(labels, "forward", 50, seed=0).prior
    assert records[0]["em_prior_tv"] < 0.5 * 0.5 * np.abs(truth - 1 / C).sum()
    # on the balanced set, the uniform prior is the oracle, and EM stays close to it
    (uniform,) = label_shift_study(logits, labels, train_prior, 1.0, kinds=["uniform"], seeds=[0])
    assert uniform["methods"]["oracle"] == uniform["methods"]["uniform"]
    assert uniform["methods"]["adaptive"]["acc"] >= uniform["methods"]["uniform"]["acc"] - 1.0


def test_shift_summary_is_ordered_forward_uniform_backward():
    logits, labels = synthetic()
    r = evaluate_logits(logits, labels, COUNTS, None, shift_factors=[2, 10], shift_seeds=range(2))
    sets = [s["set"] for s in r["label_shift"]["summary"]]
    assert sets == ["forward-10", "forward-2", "uniform", "backward-2", "backward-10"]
    assert all(s["seeds"] == 2 for s in r["label_shift"]["summary"])
    assert (
        r["temperature"] is None
        and r["calibration"]["uniform"]["raw"] == r["calibration"]["uniform"]["scaled"]
    )


def test_source_prior_makes_a_ce_model_equivalent_to_its_balanced_logits():
    """CE logits z + log π_train evaluated with π_s = π_train give the numbers of the balanced logits z."""
    logits, labels = synthetic(signal=1.5)
    train_prior = np.asarray(COUNTS) / sum(COUNTS)
    kw = {"shift_factors": [10], "shift_seeds": range(2)}
    balanced = evaluate_logits(logits, labels, COUNTS, None, **kw)
    ce = evaluate_logits(logits + np.log(train_prior), labels, COUNTS, None, source_prior=train_prior, **kw)
    for prior in ("uniform", "train", "adaptive"):
        assert ce["calibration"][prior]["raw"] == pytest.approx(balanced["calibration"][prior]["raw"])
    np.testing.assert_allclose(ce["adaptive_prior"], balanced["adaptive_prior"], atol=1e-6)
    for a, b in zip(ce["label_shift"]["summary"], balanced["label_shift"]["summary"], strict=True):
        for method, values in b["methods"].items():
            assert a["methods"][method] == pytest.approx(values)


def test_class_bias_enters_every_calibrated_posterior_and_em():
    """``"scaled"`` numbers, EM and every label-shift method use z / T + b; ``"raw"`` uses z."""
    logits, labels = synthetic(signal=1.5)
    bias, t = np.linspace(-1.0, 1.0, C), 1.3  # a deliberately large bias
    r = evaluate_logits(logits, labels, COUNTS, t, class_bias=bias, shift_factors=[5], shift_seeds=range(2))
    a = logits / t + bias  # [N, C]
    assert r["class_bias"] == pytest.approx(bias.tolist())
    assert r["longtail"]["uniform"]["acc"] == pytest.approx(100 * np.mean(a.argmax(1) == labels))
    assert r["calibration"]["uniform"]["raw"]["acc"] == pytest.approx(
        100 * np.mean(logits.argmax(1) == labels)
    )
    nll_scaled = -np.mean(log_softmax(a)[np.arange(labels.size), labels])
    assert r["calibration"]["uniform"]["scaled"]["nll"] == pytest.approx(nll_scaled)
    pi_hat, _ = em_prior(a, 1.0, dirichlet_alpha=r["em_alpha"], max_iter=200, tol=1e-7)
    np.testing.assert_allclose(r["adaptive_prior"], pi_hat, atol=1e-9)
    for rec in r["label_shift"]["records"][:3]:  # forward-5 seeds 0, 1, then uniform seed 0
        shifted = make_shifted_set(labels, rec["kind"], rec["imbalance_factor"], rec["seed"], C)
        z, y = a[shifted.indices], labels[shifted.indices]
        pi_set, _ = em_prior(z, 1.0, dirichlet_alpha=r["em_alpha"], max_iter=200, tol=1e-7)
        for method, prior in (
            ("uniform", np.full(C, 1 / C)),
            ("oracle", shifted.prior),
            ("adaptive", pi_set),
        ):
            p = softmax(z + np.log(prior))
            assert rec["methods"][method]["acc"] == pytest.approx(100 * np.mean(p.argmax(1) == y))
            assert rec["methods"][method]["nll"] == pytest.approx(-np.mean(np.log(p[np.arange(y.size), y])))
    with pytest.raises(ValueError, match="class_bias"):
        evaluate_logits(logits, labels, COUNTS, t, class_bias=bias[:3])


def test_bias_fitted_on_a_validation_split_removes_em_drift_without_shift():
    """A model that over-predicts some classes: with T alone EM drifts away from uniform on a balanced test set
    (and costs accuracy); with BCTS (T and b fitted on a separate balanced validation split) it does not."""
    offset = np.array(
        [0.9, 0.0, -0.9, 0.0, 0.6, 0.0, -0.6, 0.0, 0.0, 0.0]
    )  # per-class logit bias of the model
    val_z, val_y = synthetic(per_class=60, signal=2.5, seed=11)
    test_z, test_y = synthetic(per_class=PER_CLASS, signal=2.5, seed=12)
    val_z, test_z = val_z + offset, test_z + offset
    train_prior = np.asarray(COUNTS) / sum(COUNTS)
    t_ts = fit_temperature(val_z, val_y)
    t, b = fit_bias_corrected_temperature(val_z, val_y)
    assert np.corrcoef(b, -offset)[0, 1] > 0.9  # b undoes the offset (up to its Gaussian prior)
    (ts,) = label_shift_study(test_z, test_y, train_prior, t_ts, kinds=["uniform"], seeds=[0])
    (bcts,) = label_shift_study(test_z, test_y, train_prior, t, kinds=["uniform"], seeds=[0], class_bias=b)
    assert bcts["em_prior_tv"] < 0.5 * ts["em_prior_tv"]
    gap = {
        k: r["methods"]["adaptive"]["acc"] - r["methods"]["uniform"]["acc"]
        for k, r in (("ts", ts), ("bcts", bcts))
    }
    assert gap["bcts"] >= -0.5 and gap["bcts"] > gap["ts"], gap
    np.testing.assert_allclose(calibrate_logits(test_z, t, b), test_z / t + b)


def test_posterior_rejects_unknown_prior():
    with pytest.raises(ValueError, match="uniform, train, adaptive, oracle"):
        posterior(np.zeros((2, 3)), "balanced")


# --- plots.py / html.py -------------------------------------------------------------------------------------------


def _check_png(path: Path) -> None:
    data = Path(path).read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    with Image.open(path) as img:
        img.verify()


def test_report_files_from_synthetic_logits(tmp_path):
    from training.evaluate import write_report

    logits, labels = synthetic(signal=1.5)
    results = evaluate_logits(logits, labels, COUNTS, 1.2, shift_factors=[5], shift_seeds=range(2))
    entries = [
        {
            "label": f"model {i}",
            "method": "rescom",
            "class_names": [str(c) for c in range(C)],
            "class_counts": COUNTS,
            "results": results,
        }
        for i in range(2)
    ]
    settings = {
        "em_alpha": 2.0,
        "shift_factors": [5],
        "shift_kinds": ["forward", "uniform", "backward"],
        "seeds": 2,
    }
    paths = write_report(entries, tmp_path, "pytest", settings)
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == 2 * 4 + 1
    for png in pngs:
        _check_png(png)
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == len(pngs)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    report = json.loads(paths["json"].read_text())
    assert [m["label"] for m in report["models"]] == ["model 0", "model 1"]


# --- a tiny exported model, end to end -------------------------------------------------------------------------


@pytest.mark.slow
def test_report_of_an_exported_model(tiny_run, tmp_path):
    import onnxruntime as ort

    from export.exporter import export_checkpoint
    from rescom.data import build_datasets
    from rescom.data.arrays import split_arrays
    from training.evaluate import main

    run_dir, metrics = tiny_run
    repo = tmp_path / "models"
    export_checkpoint(
        run_dir / "best.pt", repo, "tiny", command="pytest", verify=False
    )  # parity: test_export
    out = tmp_path / "report"
    report = main(
        [
            "--model-repository",
            str(repo),
            "--name",
            "tiny",
            "--checkpoint",
            str(run_dir / "best.pt"),
            "--many-threshold",
            "50",
            "--seeds",
            "2",
            "--shift-factors",
            "2",
            "10",
            "--out",
            str(out),
        ]
    )

    assert (out / "report.html").is_file() and (out / "report.json").is_file()
    for png in out.glob("*.png"):
        _check_png(png)
    assert len(list(out.glob("*.png"))) == 2 * 4 + 1
    onnx_entry, torch_entry = report["models"]
    assert onnx_entry["label"] == "tiny/1" and onnx_entry["dataset"] == "digits_lt"

    # accuracy recomputed independently: ONNX Runtime on the served images
    images, labels = split_arrays(build_datasets("digits_lt", None, imbalance_factor=20), "test")
    session = ort.InferenceSession(
        str(repo / "tiny" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    logits = session.run(["logits"], {"images": images})[0]
    meta = json.loads((repo / "tiny" / "1" / METADATA_FILE).read_text())
    cal = meta["calibration"]
    assert (
        meta["dataset_kwargs"] == onnx_entry["dataset_kwargs"]
        and "imbalance_factor" in meta["dataset_kwargs"]
    )
    # the uniform prior as served: argmax of z / T + b (BCTS fitted at export); the raw argmax is training's
    served = calibrate_logits(logits, cal["temperature"], cal["class_bias"])
    assert onnx_entry["results"]["longtail"]["uniform"]["acc"] == pytest.approx(
        100 * np.mean(served.argmax(1) == labels)
    )
    raw_acc = 100 * np.mean(logits.argmax(1) == labels)
    assert raw_acc == pytest.approx(metrics["acc"], abs=0.21)
    assert onnx_entry["results"]["calibration"]["uniform"]["raw"]["acc"] == pytest.approx(raw_acc)
    # the checkpoint has T only (no bias): its uniform prior is the raw argmax
    assert torch_entry["results"]["longtail"]["uniform"]["acc"] == pytest.approx(raw_acc, abs=0.21)
    assert torch_entry["results"]["class_bias"] is None
    assert onnx_entry["results"]["temperature"] == pytest.approx(cal["temperature"])
    assert onnx_entry["results"]["class_bias"] == pytest.approx(cal["class_bias"])
    assert onnx_entry["class_counts"] == metrics["class_counts"]

    # a dataset built with other kwargs is refused: its test split is not the model's
    with pytest.raises(ValueError, match="training counts"):
        main(
            [
                "--model-repository",
                str(repo),
                "--name",
                "tiny",
                "--data-kwarg",
                "imbalance_factor=10",
                "--out",
                str(tmp_path / "refused"),
            ]
        )


def test_balanced_accuracy_is_the_mean_per_class_accuracy_and_every_block_reports_both():
    from rescom.evaluation.report import balanced_accuracy, calibration_metrics

    labels = np.array([0] * 8 + [1] * 2)  # imbalanced: class 0 right, class 1 wrong
    preds = np.zeros(10, dtype=np.int64)
    assert balanced_accuracy(preds, labels) == 50.0
    probs = np.eye(2)[preds] * 0.9 + 0.05
    m = calibration_metrics(probs, labels)
    assert m["top1"] == m["acc"] == 80.0 and m["balanced_acc"] == 50.0


def test_figures_name_classes_and_keep_the_bin_counts_on_their_own_axis(tmp_path):
    from rescom.evaluation.plots import plot_per_class_accuracy, plot_reliability

    path = plot_per_class_accuracy(
        [90.0, 50.0, None], [100, 10, 1], tmp_path / "pc.png", 50, 20, class_names=["a", "b", "c"]
    )
    assert path.stat().st_size > 0
    bins = {"edges": [0.0, 0.5, 1.0], "confidence": [0.3, 0.8], "accuracy": [0.2, 0.9], "count": [3.0, 7.0]}
    cal = {"ece": 0.05, "nll": 0.3}
    rel = {p: {"raw": bins, "scaled": bins} for p in ("uniform", "train", "adaptive")}
    cals = {p: {"raw": cal, "scaled": cal} for p in ("uniform", "train", "adaptive")}
    assert plot_reliability(rel, cals, tmp_path / "rel.png", temperature=0.8, title="t").stat().st_size > 0
