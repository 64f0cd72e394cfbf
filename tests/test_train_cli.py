"""User errors of training/train.py: one line on stderr, exit status 2, found before any data is loaded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import training.train as train_module
from rescom.config import ConfigError
from training.cli import choose_num_threads, get_args_parser, resolve_config, unused_option_warnings
from training.train import cli

ROOT = Path(__file__).resolve().parents[1]

BAD_INVOCATIONS = [
    (["--config", "no/such.yaml"], "train.py: error: --config: file not found: no/such.yaml"),
    (
        ["optim.lrr=0.1"],
        "train.py: error: unknown config key 'optim.lrr' in override 'optim.lrr=0.1'; known keys here: "
        "batch_size, epochs, gamma, lr, milestones, min_lr_ratio, momentum, nesterov, schedule, warmup_epochs, "
        "weight_decay",
    ),
    (["optim.lr"], "train.py: error: override 'optim.lr' is not of the form key=value (e.g. optim.lr=0.05)"),
    (["optim.lr=abc"], "train.py: error: optim.lr must be a number, got 'abc'"),
    (["optim.epochs=2.5"], "train.py: error: optim.epochs must be an integer, got 2.5"),
    (
        ["--config", "training/configs/cifar100_lt_if100.yaml"],
        "train.py: error: data.dir (--data-dir): folder not found: data/cifar (data.name=cifar100_lt)",
    ),
    (
        ["--config", "training/configs/cifar10_lt_if100.yaml", "--data-dir", "/no/cifar"],
        "train.py: error: data.dir (--data-dir): folder not found: /no/cifar (data.name=cifar10_lt)",
    ),
    (
        ["--config", "training/configs/imagenet_lt.yaml"],
        "train.py: error: data.dir (--data-dir): folder not found: data/imagenet (data.name=imagenet_lt)",
    ),
    (
        ["eval.select_metric=acc"],
        "train.py: error: eval.select_metric must be one of balanced_acc, top1, got 'acc'",
    ),
    (["--resume", "no/last.pt"], "train.py: error: --resume: checkpoint not found: no/last.pt"),
]


@pytest.fixture
def no_data_loading(monkeypatch):
    """Fail the test if a bad invocation gets as far as building the datasets."""

    def forbidden(*args, **kwargs):
        raise AssertionError("data was loaded before the configuration was checked")

    monkeypatch.setattr(train_module, "build_datasets", forbidden)


@pytest.mark.parametrize(("argv", "line"), BAD_INVOCATIONS, ids=[" ".join(a) for a, _ in BAD_INVOCATIONS])
def test_bad_invocation_is_one_line_and_exit_2(argv, line, capsys, no_data_loading, tmp_path):
    assert cli([*argv, "--output-dir", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [line]
    assert captured.out == ""


def test_the_script_itself_exits_2_without_a_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "training/train.py", "optim.lr=abc", "--output-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["train.py: error: optim.lr must be a number, got 'abc'"]


def test_debug_shows_the_traceback(no_data_loading):
    with pytest.raises(ConfigError, match="optim.lr must be a number"):
        cli(["optim.lr=abc", "--debug"])


def test_data_dir_for_digits_warns_that_it_is_unused():
    args = get_args_parser().parse_intermixed_args(["--data-dir", "/somewhere"])
    assert unused_option_warnings(resolve_config(args), args) == [
        "data.dir (--data-dir) is not used by data.name=digits_lt (its data ships with scikit-learn); ignoring it"
    ]
    args = get_args_parser().parse_intermixed_args(["--method", "ce", "loss.num_negatives=5"])
    assert unused_option_warnings(resolve_config(args), args) == [
        "loss.num_negatives only apply to method rescom, not ce; ignoring them"
    ]


def test_num_threads_default_is_the_affinity_mask(monkeypatch):
    import os

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    cfg = resolve_config(get_args_parser().parse_intermixed_args([]))
    assert choose_num_threads(cfg) == (
        len(os.sched_getaffinity(0)),
        f"{len(os.sched_getaffinity(0))} usable CPUs (sched_getaffinity)",
    )
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert choose_num_threads(cfg) == (1, "OMP_NUM_THREADS")
    cfg = resolve_config(get_args_parser().parse_intermixed_args(["train.num_threads=3"]))
    assert choose_num_threads(cfg) == (3, "train.num_threads")
