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

__all__ = ["DEFAULT_CONFIG", "METHODS", "load_config", "merge", "apply_overrides", "validate_config"]

METHODS = ("rescom", "balanced_softmax", "ce")

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
    },
    "eval": {"batch_size": 256, "many_threshold": 100, "few_threshold": 20},
}


def merge(base: Mapping[str, Any], update: Mapping[str, Any], path: str = "") -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base``; unknown keys are an error."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        where = f"{path}{key}"
        if key not in out:
            raise ValueError(f"unknown config key {where!r}; known keys here: {', '.join(sorted(out))}")
        if isinstance(out[key], dict) and key not in ("kwargs",):
            if not isinstance(value, Mapping):
                raise ValueError(f"config key {where!r} must be a mapping, got {value!r}")
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
        raise FileNotFoundError(f"config file not found: {path}")
    with path.open() as fh:
        recipe = yaml.safe_load(fh) or {}
    if not isinstance(recipe, Mapping):
        raise ValueError(f"{path} must hold a YAML mapping at the top level")
    return merge(DEFAULT_CONFIG, recipe)


def apply_overrides(config: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides; values are parsed as YAML (``1e-3``, ``[1, 2]``, ``null``)."""
    out = copy.deepcopy(dict(config))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value (e.g. optim.lr=0.05)")
        key, raw = item.split("=", 1)
        value = _parse_value(raw)
        node: dict[str, Any] = out
        parts = key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if not isinstance(child, dict):
                raise ValueError(f"unknown config key {'.'.join(parts[: i + 1])!r} in override {item!r}")
            node = child
        leaf = parts[-1]
        if leaf not in node and not (len(parts) >= 2 and parts[-2] == "kwargs"):
            raise ValueError(f"unknown config key {key!r}; known keys here: {', '.join(sorted(node))}")
        node[leaf] = value
    return out


def _parse_value(raw: str) -> Any:
    """YAML scalar parsing, plus the numbers YAML 1.1 reads as strings (``1e-3``)."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def validate_config(config: Mapping[str, Any]) -> None:
    """Check values that would otherwise fail late or silently train something else."""
    if config["method"] not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {config['method']!r}")
    optim, loss = config["optim"], config["loss"]
    if int(optim["epochs"]) < 1:
        raise ValueError(f"optim.epochs must be >= 1, got {optim['epochs']}")
    if int(optim["batch_size"]) < 2:
        raise ValueError(f"optim.batch_size must be >= 2, got {optim['batch_size']}")
    if optim["schedule"] not in ("step", "cosine", "constant"):
        raise ValueError(f"optim.schedule must be step, cosine or constant, got {optim['schedule']!r}")
    if not 0 <= float(loss["beta"]) < 1:
        raise ValueError(f"loss.beta must be in [0, 1), got {loss['beta']}")
    if float(loss["temperature"]) <= 0:
        raise ValueError(f"loss.temperature (τ) must be > 0, got {loss['temperature']}")
    if config["train"]["amp"] not in ("auto", "bf16", "fp16", "none"):
        raise ValueError(f"train.amp must be auto, bf16, fp16 or none, got {config['train']['amp']!r}")
