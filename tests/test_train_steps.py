"""The trainer's steps one by one (build, resume, one epoch, evaluate + checkpoint, finish) on a tiny recipe."""

from __future__ import annotations

import json

import pytest
import torch

from rescom.checkpoint import load_checkpoint
from training.train import (
    build_trainer,
    evaluate_and_checkpoint,
    finish,
    get_args_parser,
    resolve_config,
    resume_trainer,
    run_epoch,
)

TINY = [
    "--config",
    "training/configs/digits_lt.yaml",
    "--epochs",
    "2",
    "--batch-size",
    "16",
    "--no-progress",
    "model.arch=resnet20",
    "optim.warmup_epochs=0",
    "data.kwargs={n_max: 12, imbalance_factor: 3, test_per_class: 3, val_per_class: 2}",
    "loss.queue_size=2",
    "loss.num_negatives=6",
    "train.num_threads=1",
]


def tiny_config(out_dir, *extra: str) -> dict:
    return resolve_config(
        get_args_parser().parse_intermixed_args([*TINY, "--output-dir", str(out_dir), *extra])
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two epochs run step by step: (trainer, records, summary)."""
    out = tmp_path_factory.mktemp("steps")
    tr = build_trainer(tiny_config(out))
    records = [evaluate_and_checkpoint(tr, e, run_epoch(tr, e)) for e in range(tr.epochs)]
    return tr, records, finish(tr, 1.0)


def test_build_trainer_sets_threads_and_builds_everything(tmp_path):
    tr = build_trainer(tiny_config(tmp_path, "train.num_threads=1"))
    assert torch.get_num_threads() == 1
    assert len(tr.class_counts) == 10 and max(tr.class_counts) == 12
    assert tr.criterion.queue.size_per_class == 2 and tr.scaler is None and tr.amp_dtype is None
    assert tr.start_epoch == 0 and tr.best_val == -1.0 and tr.has_val
    assert len(tr.train_loader) >= 1 and tr.model is tr.model_without_ddp


def test_run_epoch_returns_a_finite_record_and_steps_the_schedule(trained):
    _, records, _ = trained
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert all(torch.isfinite(torch.tensor(r[k])) for k in ("loss", "loss_cls", "loss_con", "train_top1"))
        assert 0 <= r["train_top1"] <= 100 and r["images_per_s"] > 0
    assert records[0]["loss_con"] > 0  # ResCom's contrastive term is in the loss


def test_evaluate_and_checkpoint_selects_by_balanced_accuracy(trained):
    tr, records, _ = trained
    assert tr.select_metric == "balanced_acc"
    best = max(range(2), key=lambda i: (records[i]["val_balanced_acc"], -i))
    assert tr.best_epoch == best and tr.best_val == pytest.approx(records[best]["val_balanced_acc"])
    state = load_checkpoint(tr.out_dir / "best.pt")
    assert state["epoch"] == best and state["select_metric"] == "balanced_acc"
    assert load_checkpoint(tr.out_dir / "last.pt")["epoch"] == 1
    logged = [json.loads(line) for line in (tr.out_dir / "log.jsonl").read_text().splitlines()]
    assert all({"val_top1", "val_balanced_acc", "val_acc", "train_top1"} <= set(r) for r in logged)


def test_finish_writes_both_metrics(trained):
    tr, _, summary = trained
    saved = json.loads((tr.out_dir / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    for key in ("top1", "balanced_acc", "acc", "many", "medium", "few", "temperature", "select_metric"):
        assert key in saved, key
    assert saved["acc"] == saved["top1"]
    per_class = [v for v in saved["per_class_acc"] if v is not None]
    assert saved["balanced_acc"] == pytest.approx(sum(per_class) / len(per_class))
    meta = load_checkpoint(tr.out_dir / "best.pt")["meta"]
    assert (
        meta["metrics"]["top1"] == saved["top1"] and meta["metrics"]["balanced_acc"] == saved["balanced_acc"]
    )


def test_select_metric_top1_is_configurable(tmp_path):
    tr = build_trainer(tiny_config(tmp_path, "eval.select_metric=top1", "--epochs", "1"))
    record = evaluate_and_checkpoint(tr, 0, run_epoch(tr, 0))
    assert tr.best_val == pytest.approx(record["val_top1"])
    assert load_checkpoint(tr.out_dir / "best.pt")["select_metric"] == "top1"


def test_resume_trainer_restores_the_run(trained, tmp_path):
    done, _, _ = trained
    tr = build_trainer(tiny_config(tmp_path))
    resume_trainer(tr, str(done.out_dir / "last.pt"))
    assert tr.start_epoch == 2 and tr.best_epoch == done.best_epoch and tr.best_val == done.best_val
    for key, value in done.criterion.state_dict().items():
        assert torch.equal(value, tr.criterion.state_dict()[key]), key
    assert tr.scheduler.last_epoch == done.scheduler.last_epoch
    resume_trainer(tr, None)  # no-op
    assert tr.start_epoch == 2
