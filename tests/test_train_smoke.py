import json

import pytest
import torch

from rescom.checkpoint import load_checkpoint
from tests.conftest import run_training

pytestmark = pytest.mark.slow


def test_run_writes_every_output(tiny_run):
    out, metrics = tiny_run
    for name in ("last.pt", "best.pt", "config.yaml", "log.jsonl", "metrics.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    for key in (
        "method",
        "epoch",
        "acc",
        "many",
        "medium",
        "few",
        "per_class_acc",
        "class_names",
        "class_counts",
    ):
        assert key in saved, key
    assert saved["method"] == "rescom" and len(saved["class_names"]) == 10
    assert 0 <= saved["acc"] <= 100 and saved == json.loads(json.dumps(metrics))
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert all("val_acc" in line and "loss_con" in line for line in lines)


def test_best_checkpoint_holds_what_export_needs(tiny_run):
    out, metrics = tiny_run
    state = load_checkpoint(out / "best.pt")
    meta = state["meta"]
    assert meta["arch"] == "resnet20" and meta["method"] == "rescom" and meta["num_classes"] == 10
    assert meta["class_counts"] == metrics["class_counts"]
    assert len(meta["mean"]) == 3 and meta["resize"] == 32 and meta["crop"] == 32
    assert meta["metrics"]["acc"] == pytest.approx(metrics["acc"])
    assert meta["temperature"] is not None and meta["temperature"] > 0
    assert any(k.startswith("queue.") for k in state["criterion"]), "the class-balanced queue is checkpointed"


def test_resume_continues_exactly(tmp_path, tiny_run):
    _, straight = tiny_run
    out = tmp_path / "resumed"
    assert run_training(out, "train.stop_after_epochs=1") == {"stopped_after_epoch": 1}
    resumed = run_training(out, "--resume")
    assert resumed["acc"] == pytest.approx(straight["acc"], abs=1e-9)
    assert resumed["per_class_acc"] == pytest.approx(straight["per_class_acc"], abs=1e-9)
    a = load_checkpoint(tiny_run[0] / "last.pt")["model"]
    b = load_checkpoint(out / "last.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("method", ["balanced_softmax", "ce"])
def test_baselines_train_with_the_same_script(tmp_path, method):
    metrics = run_training(tmp_path / method, "--method", method, "--epochs", "1")
    assert metrics["method"] == method and metrics["acc"] is not None
