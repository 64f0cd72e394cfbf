import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.exporter import export_checkpoint, fit_calibration, split_images
from export.to_onnx import main as to_onnx_main
from export.verify import ParityResult, _argmax_agrees
from rescom.calibration import fit_bias_corrected_temperature
from rescom.checkpoint import load_checkpoint
from rescom.model_repository import METADATA_FILE

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    run_dir, metrics = tiny_run
    repo = tmp_path_factory.mktemp("models")
    result = export_checkpoint(run_dir / "best.pt", repo, "digits", command="pytest")
    return repo, result, metrics, run_dir


def test_repository_layout(exported):
    repo, result, _, _ = exported
    files = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())
    assert files == [
        "digits/1/model.onnx",
        "digits/1/rescom.json",
        "digits/config.pbtxt",
        "digits/labels.txt",
    ]
    assert result.version_dir == repo / "digits" / "1"
    assert not list(repo.rglob("*.data")), "one self-contained ONNX file, no external data"


def test_parity_is_within_tolerance(exported):
    _, result, _, _ = exported
    assert result.parity is not None
    assert result.parity.max_abs_diff <= 1e-4 and result.parity.argmax_agree
    assert set(result.parity.per_batch) >= {1, 2, 7, 32}


def test_metadata_carries_everything_the_service_needs(exported):
    repo, result, metrics, run_dir = exported
    meta = json.loads((repo / "digits" / "1" / METADATA_FILE).read_text())
    assert meta == result.metadata
    assert meta["class_names"] == metrics["class_names"] and meta["class_counts"] == metrics["class_counts"]
    # test-split figures: raw argmax reproduces training's accuracy; served = calibrated, uniform prior
    assert meta["metrics"]["raw"]["top1"] == pytest.approx(metrics["acc"])
    assert meta["metrics"]["split"] == "test" and set(meta["metrics"]["served"]) >= {"top1", "balanced_acc"}
    assert meta["metrics"]["thresholds"] == {"many": 50, "few": 20}  # the digits recipe's eval thresholds
    assert meta["promotion"]["status"] == "live" and meta["promotion"]["gate"]["baseline_version"] is None
    # BCTS (the default): T and the class bias b fitted on the validation split's logits
    cal = meta["calibration"]
    assert cal["method"] == "bcts" and cal["fitted_on"] == "val" and cal["prior"] == "uniform"
    state = load_checkpoint(run_dir / "best.pt")
    val_images, val_labels = split_images(state, "val", None)
    session = ort.InferenceSession(
        str(repo / "digits" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    val_logits = session.run(["logits"], {"images": val_images})[0].astype(np.float64)
    t, b = fit_bias_corrected_temperature(val_logits, val_labels, cal["bias_prior_std"])
    assert cal["temperature"] == pytest.approx(t, rel=1e-3)
    np.testing.assert_allclose(cal["class_bias"], b, atol=1e-3)
    assert len(cal["class_bias"]) == 10 and abs(sum(cal["class_bias"])) < 1e-9
    assert meta["dataset"] == "digits_lt" and meta["dataset_kwargs"] == state["meta"]["dataset_kwargs"]
    assert meta["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    ckpt = load_checkpoint(run_dir / "best.pt")["meta"]
    assert meta["preprocess"]["mean"] == ckpt["mean"] and meta["preprocess"]["std"] == ckpt["std"]
    import hashlib

    onnx_path = repo / "digits" / "1" / "model.onnx"
    assert meta["onnx"]["sha256"] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    embedded = json.loads(props["rescom"])
    assert embedded["class_names"] == meta["class_names"] and embedded["onnx"]["sha256"] is None


def test_fit_calibration_methods_and_fallbacks():
    rng = np.random.default_rng(0)
    z, y = rng.normal(0, 2, (200, 4)), np.repeat(np.arange(4), 50)
    bcts = fit_calibration(z, y, 4, 0.9, "bcts", bias_prior_std=1.0)
    t, b = fit_bias_corrected_temperature(z, y, 1.0)
    assert bcts["temperature"] == t and bcts["class_bias"] == b.tolist() and bcts["fitted_on"] == "val"
    # temperature only: the checkpoint's T (fitted by training on the same split) and b = 0
    ts = fit_calibration(z, y, 4, 0.9, "temperature")
    confusion, val_counts = ts.pop("confusion"), ts.pop("val_counts")
    assert ts == {
        "method": "temperature",
        "temperature": 0.9,
        "class_bias": [0.0] * 4,
        "bias_prior_std": None,
        "fitted_on": "checkpoint",
    }
    # what BBSE / RLLS need at serving time: columns of the soft confusion matrix sum to 1
    np.testing.assert_allclose(np.asarray(confusion).sum(axis=0), 1.0, atol=1e-5)
    assert val_counts == [50, 50, 50, 50] and len(bcts["confusion"]) == 4
    # no validation split: the checkpoint's T (or none) and zeros
    none = fit_calibration(None, None, 4, None, "bcts")
    assert none["temperature"] is None and none["class_bias"] == [0.0] * 4 and none["method"] == "temperature"
    assert "confusion" not in none
    with pytest.raises(ValueError, match="bcts, temperature"):
        fit_calibration(z, y, 4, None, "vector")


def test_onnx_graph_has_a_dynamic_batch_and_uint8_input(exported):
    repo, *_ = exported
    model = onnx.load(str(repo / "digits" / "1" / "model.onnx"))
    (inp,) = model.graph.input
    assert inp.name == "images" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [32, 32, 3]
    session = ort.InferenceSession(
        str(repo / "digits" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    for n in (1, 3, 64):
        out = session.run(None, {"images": np.zeros((n, 32, 32, 3), np.uint8)})[0]
        assert out.shape == (n, 10) and out.dtype == np.float32


def test_config_pbtxt_parses_as_triton_model_config(exported):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repo, result, _, _ = exported
    config = text_format.Parse((repo / "digits" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == "digits" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == result.metadata["max_batch_size"]
    assert config.input[0].name == "images" and config.input[0].data_type == model_config_pb2.TYPE_UINT8
    assert list(config.input[0].dims) == [32, 32, 3]
    assert config.output[0].name == "logits" and list(config.output[0].dims) == [10]
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    labels = (repo / "digits" / config.output[0].label_filename).read_text().split()
    assert labels == result.metadata["class_names"]


def test_existing_version_is_refused_unless_forced(exported, capsys):
    repo, _, _, run_dir = exported
    argv = ["--checkpoint", str(run_dir / "best.pt"), "--model-repository", str(repo), "--name", "digits"]
    assert to_onnx_main([*argv, "--version", "1"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert to_onnx_main(argv) == 0  # no --version: the next one
    printed = capsys.readouterr().out
    assert "parity OK" in printed and "model.onnx" in printed
    assert (repo / "digits" / "2" / "model.onnx").is_file()
    assert to_onnx_main([*argv, "--version", "1", "--force", "--no-verify"]) == 0


def test_onnx_reproduces_the_recorded_test_accuracy_without_torch(exported, tmp_path):
    repo, _, metrics, run_dir = exported
    images, labels = split_images(load_checkpoint(run_dir / "best.pt"), "test", None)
    folder = tmp_path / "png"
    rows = ["path,label"]
    from PIL import Image

    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / str(label) / f"{i}.png")
        rows.append(f"{label}/{i}.png,{label}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "onnx_accuracy.py"),
            "--model-repository",
            str(repo),
            "--name",
            "digits",
            "--version",
            "1",
            "--images",
            str(folder),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    meta = json.loads((repo / "digits" / "1" / METADATA_FILE).read_text())
    assert f"raw argmax {metrics['acc']:.2f} %" in out
    assert f"served (calibrated, uniform prior) {meta['metrics']['served']['top1']:.2f} %" in out
    assert "torch imported: False" in out


def test_parity_tolerance_scales_with_the_logits_and_ties_are_not_disagreements():
    """float32 rounding grows with |z|: the allowed difference is tolerance * max(1, max |z|), and a swapped
    argmax counts only where the reference's top two are further apart than the rounding."""
    large = ParityResult(3e-2, True, {1: 3e-2}, 1e-4, "CPUExecutionProvider", scale=400.0)
    assert large.ok and large.allowed == pytest.approx(4e-2)
    small = ParityResult(3e-2, True, {1: 3e-2}, 1e-4, "CPUExecutionProvider", scale=1.0)
    assert not small.ok and "FAILED" in small.summary()
    ref = np.array([[5.0, 5.0 + 1e-6, 0.0], [1.0, 3.0, 0.0]])  # row 0: a tie within rounding
    got = np.array([[5.0 + 2e-6, 5.0, 0.0], [1.0, 3.0, 0.0]])
    assert _argmax_agrees(got, ref, tie=1e-5)
    assert not _argmax_agrees(np.array([[9.0, 0.0, 0.0], [9.0, 0.0, 0.0]]), ref, tie=1e-5)  # row 1 is decided
