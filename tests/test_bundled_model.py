"""The bundled default model (models/digits_lt/1) is what the digits-LT recipe produces."""

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from rescom.calibration import calibrate_logits, fit_bias_corrected_temperature
from rescom.config import load_config
from rescom.data import build_datasets
from rescom.data.arrays import split_arrays
from rescom.model_repository import METADATA_FILE

ROOT = Path(__file__).resolve().parents[1]
VERSION_DIR = ROOT / "models" / "digits_lt" / "1"
RECIPE = ROOT / "training" / "configs" / "digits_lt.yaml"


@pytest.fixture(scope="module")
def bundled():
    meta = json.loads((VERSION_DIR / METADATA_FILE).read_text())
    recipe = load_config(RECIPE)
    splits = build_datasets(recipe["data"]["name"], None, **recipe["data"]["kwargs"])
    return meta, recipe, splits


def test_bundle_is_small_and_self_consistent(bundled):
    meta, _, _ = bundled
    onnx_bytes = (VERSION_DIR / "model.onnx").read_bytes()
    assert len(onnx_bytes) < 5 * 2**20
    assert meta["onnx"]["sha256"] == hashlib.sha256(onnx_bytes).hexdigest()
    assert (VERSION_DIR.parent / "config.pbtxt").is_file()
    assert (VERSION_DIR.parent / "labels.txt").read_text().split() == meta["class_names"]


def test_bundle_metadata_matches_the_recipe(bundled):
    meta, recipe, splits = bundled
    assert meta["method"] == recipe["method"] and meta["dataset"] == recipe["data"]["name"]
    assert meta["architecture"]["arch"] == recipe["model"]["arch"]
    assert meta["class_names"] == splits.class_names
    assert meta["class_counts"] == list(splits.class_counts)
    assert meta["preprocess"]["mean"] == pytest.approx(splits.mean) and meta["preprocess"][
        "std"
    ] == pytest.approx(splits.std)
    assert (meta["preprocess"]["resize"], meta["preprocess"]["crop"]) == (splits.resize, splits.crop)
    assert meta["calibration"]["temperature"] > 0
    assert meta["dataset_kwargs"] == recipe["data"]["kwargs"]
    makefile = (ROOT / "Makefile").read_text()
    target = makefile[makefile.index("\nbundle-model:") :].split("\n\n")[
        0
    ]  # the rule that rebuilds the bundle
    assert (
        "training/configs/digits_lt.yaml" in target
        and "--name digits_lt" in target
        and "--version 1" in target
    )


def test_bundle_reproduces_its_recorded_test_accuracy(bundled):
    meta, _, splits = bundled
    images, labels = split_arrays(splits, "test")
    session = ort.InferenceSession(str(VERSION_DIR / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = np.concatenate(
        [session.run(["logits"], {"images": images[i : i + 100]})[0] for i in range(0, len(images), 100)]
    )
    acc = 100.0 * float(np.mean(logits.argmax(axis=1) == labels))
    assert acc == pytest.approx(meta["metrics"]["raw"]["top1"], abs=1e-6)
    # the served figure: argmax of z / T + b (uniform prior), as /predict answers
    cal = meta["calibration"]
    served = calibrate_logits(logits, cal["temperature"], cal["class_bias"]).argmax(axis=1)
    assert 100.0 * float(np.mean(served == labels)) == pytest.approx(
        meta["metrics"]["served"]["top1"], abs=1e-6
    )
    assert meta["metrics"]["thresholds"] == {"many": 50, "few": 20}  # the recipe's eval thresholds


def test_bundle_calibration_is_bcts_on_the_validation_split(bundled):
    """``calibration.temperature`` T and ``calibration.class_bias`` b are what BCTS fits on the val split."""
    meta, _, splits = bundled
    cal = meta["calibration"]
    assert cal["method"] == "bcts" and cal["fitted_on"] == "val"
    images, labels = split_arrays(splits, "val")
    session = ort.InferenceSession(str(VERSION_DIR / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = np.concatenate(
        [session.run(["logits"], {"images": images[i : i + 100]})[0] for i in range(0, len(images), 100)]
    ).astype(np.float64)
    t, b = fit_bias_corrected_temperature(logits, labels, cal["bias_prior_std"])
    # export fits on the torch logits, which match ONNX Runtime's within the parity tolerance (1e-4)
    assert cal["temperature"] == pytest.approx(t, rel=1e-3)
    np.testing.assert_allclose(cal["class_bias"], b, atol=1e-3)
    assert len(cal["class_bias"]) == len(meta["class_names"]) and abs(sum(cal["class_bias"])) < 1e-9
