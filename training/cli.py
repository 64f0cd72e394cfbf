"""The training command line: flags, config resolution, checks before any data is loaded, CPU threads.

Every user mistake found here raises :class:`~rescom.config.ConfigError`, which ``training/train.py`` prints
as one ``train.py: error: ...`` line on stderr with exit status 2 (argparse's convention); ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from rescom.config import METHODS, ConfigError, apply_overrides, load_config, validate_config
from rescom.threads import available_cpus

__all__ = [
    "FLAGS",
    "check_paths",
    "choose_num_threads",
    "get_args_parser",
    "option_name",
    "resolve_config",
    "unused_option_warnings",
]

# Config key -> the flag that sets it (for messages that name "which option").
FLAGS = {
    "method": "--method",
    "optim.epochs": "--epochs",
    "optim.batch_size": "--batch-size",
    "optim.lr": "--lr",
    "data.dir": "--data-dir",
    "device": "--device",
    "seed": "--seed",
    "data.num_workers": "--workers",
}
# Datasets that read nothing from data.dir (their data ships with a package).
_NO_DATA_DIR = {"digits_lt"}
# Datasets that cannot be built without data.dir.
_NEED_DATA_DIR = {"cifar10_lt", "cifar100_lt", "imagefolder"}
_CONTRASTIVE_KEYS = ("queue_size", "num_positives", "num_negatives", "temperature", "con_weight", "beta")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The command line; every flag is optional and overrides the YAML recipe."""
    p = argparse.ArgumentParser(
        prog="train.py", description="Train ResCom on long-tailed data.", add_help=add_help
    )
    p.add_argument(
        "--config", default="training/configs/digits_lt.yaml", help="YAML recipe (default: %(default)s)"
    )
    p.add_argument("--method", choices=METHODS, help="rescom (default), or a baseline on the same recipe")
    p.add_argument("--epochs", type=int, help="number of epochs (overrides optim.epochs)")
    p.add_argument("--batch-size", type=int, help="global batch size per view (overrides optim.batch_size)")
    p.add_argument("--lr", type=float, help="base learning rate (overrides optim.lr)")
    p.add_argument("--output-dir", help="where checkpoints and logs go (default: runs/<config name>)")
    p.add_argument("--data-dir", help="dataset root (overrides data.dir)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument(
        "--resume", nargs="?", const="auto", help="checkpoint to resume; bare flag = OUTPUT_DIR/last.pt"
    )
    p.add_argument("--seed", type=int, help="random seed (default: 0)")
    p.add_argument("--workers", type=int, help="data-loading worker processes (overrides data.num_workers)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for configuration errors too")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=0.05")
    return p


def option_name(key: str) -> str:
    """``data.dir (--data-dir)``: the config key and, where one exists, the flag that sets it."""
    flags = {**FLAGS, "output_dir": "--output-dir"}
    return f"{key} ({flags[key]})" if key in flags else key


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults ← recipe ← flags ← overrides, type- and range-checked; raises :class:`ConfigError`."""
    cfg = load_config(args.config)
    flags = {key: getattr(args, flag[2:].replace("-", "_")) for key, flag in FLAGS.items()}
    cfg = apply_overrides(cfg, [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None])
    if args.no_progress:
        cfg["train"]["progress"] = False
    cfg = apply_overrides(cfg, args.overrides)
    if args.output_dir:
        cfg["output_dir"] = args.output_dir
    elif args.config and cfg["output_dir"] == "runs/default":
        cfg["output_dir"] = f"runs/{Path(args.config).stem}"
    validate_config(cfg)
    return cfg


def check_paths(cfg: dict[str, Any], resume: str | None) -> None:
    """Every path the run will read exists; the message names the path and the option that set it."""
    name, data_dir = cfg["data"]["name"], cfg["data"]["dir"]
    if name in _NEED_DATA_DIR and data_dir is None:
        raise ConfigError(
            f"{option_name('data.dir')} is required for data.name={name}: give the dataset folder"
        )
    if data_dir is not None and name not in _NO_DATA_DIR and not Path(data_dir).is_dir():
        raise ConfigError(f"{option_name('data.dir')}: folder not found: {data_dir} (data.name={name})")
    weights = cfg["model"]["pretrained_weights"]
    if weights is not None and not Path(weights).is_file():
        raise ConfigError(f"model.pretrained_weights: file not found: {weights}")
    if resume not in (None, "auto") and not Path(resume).is_file():
        raise ConfigError(f"--resume: checkpoint not found: {resume}")
    if resume == "auto" and not (Path(cfg["output_dir"]) / "last.pt").is_file():
        raise ConfigError(
            f"--resume: no checkpoint to resume in {option_name('output_dir')}: "
            f"{Path(cfg['output_dir']) / 'last.pt'} does not exist"
        )


def unused_option_warnings(cfg: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Options the user set that this recipe ignores (one line each)."""
    out = []
    name = cfg["data"]["name"]
    if name in _NO_DATA_DIR and cfg["data"]["dir"] is not None:
        out.append(
            f"{option_name('data.dir')} is not used by data.name={name} (its data ships with scikit-learn); "
            "ignoring it"
        )
    if cfg["method"] != "rescom":
        set_keys = {o.split("=", 1)[0].strip() for o in args.overrides if "=" in o}
        unused = [f"loss.{k}" for k in _CONTRASTIVE_KEYS if f"loss.{k}" in set_keys]
        if unused:
            out.append(f"{', '.join(unused)} only apply to method rescom, not {cfg['method']}; ignoring them")
    return out


def choose_num_threads(cfg: dict[str, Any]) -> tuple[int, str]:
    """CPU intra-op threads for this process and why: ``train.num_threads``, else OMP_NUM_THREADS, else the
    CPUs this process may run on (``sched_getaffinity``) divided among the local ranks."""
    if cfg["train"]["num_threads"] is not None:
        return int(cfg["train"]["num_threads"]), "train.num_threads"
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    local_ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    cpus = available_cpus()
    why = f"{cpus} usable CPUs (sched_getaffinity)" + (
        f" / {local_ranks} local ranks" if local_ranks > 1 else ""
    )
    return max(1, cpus // local_ranks), why


def print_error(message: str) -> None:
    """argparse-style one-line error on stderr."""
    print(f"train.py: error: {message}", file=sys.stderr)
