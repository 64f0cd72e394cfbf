"""Training configuration: defaults ← YAML recipe ← command-line flags ← ``key=value`` overrides.

The defaults are the published CIFAR-100-LT recipe of ResCom (ResNet-32, D=64, d=32, batch 128, 400 epochs,
lr 0.1 with 10 warm-up epochs and ×0.1 at 320 / ×0.01 at 360, wd 5e-4, K=10, Qp=1, Qn=400, τ=0.2, λ=0.5,
β=0.999999). Unlike the official script, the step schedule is really applied, and a key that a recipe omits
falls back to these values, never to a different method.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DEFAULT_CONFIG",
    "METHODS",
    "SELECT_METRICS",
    "ConfigError",
    "apply_overrides",
    "load_config",
    "merge",
    "validate_config",
]

METHODS = ("rescom", "balanced_softmax", "ce")
SELECT_METRICS = ("balanced_acc", "top1")  # validation metric that picks best.pt


class ConfigError(ValueError):
    """A mistake in the recipe, a flag or an override: reported as one line (exit status 2), no traceback."""


DEFAULT_CONFIG: dict[str, Any] = {
    "method": "rescom",  # rescom | balanced_softmax | ce (baselines share backbone and schedule)
    "seed": 0,
    "device": "auto",  # auto | cpu | cuda | cuda:N
    "output_dir": "runs/default",
    "data": {
        "name": "cifar100_lt",
        "dir": None,
        "kwargs": {"imbalance_factor": 100},
        "preset": None,  # augmentation preset; None = the dataset's default
        "num_workers": 4,
    },
    "model": {
        "arch": "resnet32",
        "kwargs": {},
        "proj_dim": 32,  # d
        "pretrained_weights": None,  # local .pth file with ImageNet weights (torchvision backbones)
        "sync_bn": False,
    },
    "loss": {
        "temperature": 0.2,  # τ
        "con_weight": 0.5,  # λ
        "queue_size": 10,  # K keys per class
        "num_positives": 1,  # Qp
        "num_negatives": 400,  # Qn
        "beta": 0.999999,  # β of the effective number
        "con_warmup_epochs": 0,  # λ ramps from 0 over these epochs (rescom.recipes.contrastive_weight)
    },
    "optim": {
        "batch_size": 128,  # per view, global (split over ranks)
        "epochs": 400,
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "nesterov": False,
        "schedule": "step",  # step | cosine | constant
        "warmup_epochs": 10,
        "milestones": [320, 360],
        "gamma": 0.1,
        "min_lr_ratio": 1e-5,  # cosine end point, lr · ratio
    },
    "train": {
        "amp": "auto",  # auto (bf16 on CUDA when supported, else fp16; off on CPU) | bf16 | fp16 | none
        "channels_last": True,
        "log_every": 20,
        "tensorboard": False,
        "eval_every": 1,
        "grad_clip": None,
        "progress": True,
        "stop_after_epochs": None,  # stop this process after N epochs of the schedule (time-sliced jobs)
        "num_threads": None,  # CPU intra-op threads; None = the CPUs this process may use (sched_getaffinity)
        "progress_every": 5,  # steps between progress-bar updates (running loss, top-1, img/s)
    },
    "eval": {
        "batch_size": 256,
        "many_threshold": 100,
        "few_threshold": 20,
        "select_metric": "balanced_acc",  # balanced_acc (mean per-class accuracy) | top1, on the val split
    },
}

# Keys whose default is None, and the type they take when set.
_NULLABLE: dict[str, type] = {
    "data.dir": str,
    "data.preset": str,
    "model.pretrained_weights": str,
    "train.grad_clip": float,
    "train.stop_after_epochs": int,
    "train.num_threads": int,
}


def merge(base: Mapping[str, Any], update: Mapping[str, Any], path: str = "") -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base``; unknown keys are an error."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        where = f"{path}{key}"
        if key not in out:
            raise ConfigError(f"unknown config key {where!r}; known keys here: {', '.join(sorted(out))}")
        if isinstance(out[key], dict) and key not in ("kwargs",):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {where!r} must be a mapping, got {value!r}")
            out[key] = merge(out[key], value, f"{where}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(path: str | Path | None) -> dict[str, Any]:
    """Defaults merged with the YAML recipe at ``path`` (``None``: defaults only)."""
    if path is None:
        return copy.deepcopy(DEFAULT_CONFIG)
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: file not found: {path}")
    try:
        with path.open() as fh:
            recipe = yaml.safe_load(fh) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path}: not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(recipe, Mapping):
        raise ConfigError(f"--config {path}: must hold a YAML mapping at the top level")
    try:
        return merge(DEFAULT_CONFIG, recipe)
    except ConfigError as err:
        raise ConfigError(f"--config {path}: {err}") from None


def apply_overrides(config: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides; values are parsed as YAML (``1e-3``, ``[1, 2]``, ``null``)."""
    out = copy.deepcopy(dict(config))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=0.05)")
        key, raw = item.split("=", 1)
        value = _parse_value(raw)
        node: dict[str, Any] = out
        parts = key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if not isinstance(child, dict):
                raise ConfigError(f"unknown config key {'.'.join(parts[: i + 1])!r} in override {item!r}")
            node = child
        leaf = parts[-1]
        if leaf not in node and not (len(parts) >= 2 and parts[-2] == "kwargs"):
            raise ConfigError(
                f"unknown config key {key!r} in override {item!r}; known keys here: {', '.join(sorted(node))}"
            )
        node[leaf] = value
    return out


def _parse_value(raw: str) -> Any:
    """YAML scalar parsing, plus the numbers YAML 1.1 reads as strings (``1e-3``)."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw  # e.g. an unbalanced bracket: kept as text, so the type check names the key
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def validate_config(config: Mapping[str, Any]) -> None:
    """Check every value's type and range before anything is built; raises :class:`ConfigError` (one line)."""
    _check_types(config, DEFAULT_CONFIG, "")
    _check_values(config)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "a string"


def _fits(value: Any, expected: type) -> bool:
    if isinstance(value, bool):
        return expected is bool
    if expected is float:
        return isinstance(value, int | float)
    return isinstance(value, expected)


def _check_types(config: Mapping[str, Any], defaults: Mapping[str, Any], path: str) -> None:
    for key, default in defaults.items():
        where, value = f"{path}{key}", config.get(key)
        if key == "kwargs":
            if value is not None and not isinstance(value, Mapping):
                raise ConfigError(f"{where} must be a mapping of options, got {value!r}")
            continue
        if isinstance(default, dict):
            _check_types(value, default, f"{where}.")
            continue
        if default is None:
            if value is not None and not _fits(value, _NULLABLE[where]):
                expected = _kind(_NULLABLE[where]())
                raise ConfigError(f"{where} must be {expected} or null, got {value!r}")
            continue
        expected = type(default)
        if isinstance(default, list):
            if not isinstance(value, list) or not all(_fits(v, int) for v in value):
                raise ConfigError(f"{where} must be a list of integers, e.g. {default}, got {value!r}")
        elif not _fits(value, expected):
            raise ConfigError(f"{where} must be {_kind(default)}, got {value!r}")


def _check_values(config: Mapping[str, Any]) -> None:
    """Ranges and choices of values that would otherwise fail late or silently train something else."""
    if config["method"] not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {config['method']!r}")
    optim, loss, train = config["optim"], config["loss"], config["train"]
    if optim["epochs"] < 1:
        raise ConfigError(f"optim.epochs must be >= 1, got {optim['epochs']}")
    if optim["batch_size"] < 2:
        raise ConfigError(f"optim.batch_size must be >= 2, got {optim['batch_size']}")
    if not optim["lr"] > 0:
        raise ConfigError(f"optim.lr must be > 0, got {optim['lr']}")
    if optim["schedule"] not in ("step", "cosine", "constant"):
        raise ConfigError(f"optim.schedule must be step, cosine or constant, got {optim['schedule']!r}")
    if not 0 <= loss["beta"] < 1:
        raise ConfigError(f"loss.beta must be in [0, 1), got {loss['beta']}")
    if loss["temperature"] <= 0:
        raise ConfigError(f"loss.temperature (τ) must be > 0, got {loss['temperature']}")
    if train["amp"] not in ("auto", "bf16", "fp16", "none"):
        raise ConfigError(f"train.amp must be auto, bf16, fp16 or none, got {train['amp']!r}")
    if train["num_threads"] is not None and train["num_threads"] < 1:
        raise ConfigError(
            f"train.num_threads must be >= 1 or null (= all usable CPUs), got {train['num_threads']}"
        )
    if train["progress_every"] < 1:
        raise ConfigError(f"train.progress_every must be >= 1, got {train['progress_every']}")
    if config["eval"]["select_metric"] not in SELECT_METRICS:
        raise ConfigError(
            f"eval.select_metric must be one of {', '.join(SELECT_METRICS)}, got {config['eval']['select_metric']!r}"
        )
