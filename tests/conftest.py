"""Shared fixtures: seeding and the torch device under test (``TORCH_DEVICE``, default cpu)."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    try:
        import torch
    except ImportError:  # service-only environments
        return
    torch.manual_seed(0)


@pytest.fixture
def device() -> str:
    return os.environ.get("TORCH_DEVICE", "cpu")


TINY_RUN_ARGS = [
    "--config",
    "training/configs/digits_lt.yaml",
    "--epochs",
    "2",
    "--no-progress",
    "--seed",
    "0",
    "model.arch=resnet20",
    "optim.warmup_epochs=1",
    "data.kwargs.val_per_class=10",
]


def run_training(output_dir, *extra: str) -> dict:
    """Run training/train.py in-process on digits-LT and return metrics.json's content."""
    from training.train import get_args_parser, main

    return main(
        get_args_parser().parse_intermixed_args([*TINY_RUN_ARGS, "--output-dir", str(output_dir), *extra])
    )


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A 2-epoch ResNet-20 digits-LT run shared by the training and export tests."""
    out = tmp_path_factory.mktemp("tiny_run")
    metrics = run_training(out)
    return out, metrics
