"""Checkpoints: one fixed-key dict, written atomically, loadable with ``torch.load(weights_only=True)``.

Keys (see docs/architecture.md): ``format``, ``model``, ``criterion`` (holds the class-balanced queue),
``optimizer``, ``scheduler``, ``scaler``, ``epoch`` (last completed, 0-based), ``best_val_acc``,
``best_epoch``, ``rng``, ``config`` and ``meta`` (everything export needs: architecture, class names and
counts π, input policy, mean/std, metrics, temperature T).
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "save_checkpoint",
    "load_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
    "to_plain",
    "model_from_checkpoint",
]

CHECKPOINT_FORMAT = "rescom-checkpoint/1"
REQUIRED_KEYS = ("format", "model", "epoch", "config", "meta")


def to_plain(value: Any) -> Any:
    """Convert numpy scalars/arrays, tuples and paths to plain Python types that ``weights_only`` accepts."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, fsync, then rename.

    A process killed while writing leaves the previous file at ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = dict(state)
    state.setdefault("format", CHECKPOINT_FORMAT)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint on the CPU with ``weights_only=True`` (no arbitrary pickled objects).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file holds something other than a ResCom checkpoint (including unexpected pickled
            objects, which ``weights_only`` refuses).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError / RuntimeError with long messages
        raise ValueError(
            f"{path} is not a loadable ResCom checkpoint (it may contain pickled objects other than tensors "
            f"and plain types, which are refused for safety): {str(err).splitlines()[0]}"
        ) from err
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise ValueError(f"{path} is not a ResCom checkpoint: expected keys {REQUIRED_KEYS}")
    if state["format"] != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} has checkpoint format {state['format']!r}; this version reads {CHECKPOINT_FORMAT!r}"
        )
    return state


def capture_rng_state() -> dict[str, Any]:
    """Torch (CPU and CUDA), numpy and Python RNG states as ``weights_only``-safe values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            *[to_plain(v) for v in np_state[2:]],
        ],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states are restored only when the device count matches)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def model_from_checkpoint(state: dict[str, Any]) -> torch.nn.Module:
    """Rebuild the :class:`rescom.models.ResComModel` of a checkpoint from its ``meta`` and load the weights.

    The one place that maps checkpoint metadata (``arch``, ``arch_kwargs``, ``num_classes`` C, ``proj_dim`` d)
    to a model; export and evaluation both call it.

    Args:
        state: a dict from :func:`load_checkpoint`.

    Returns:
        The model in eval mode, on the CPU.
    """
    from rescom.models import create_model  # lazily: loading a checkpoint needs no architecture

    meta = state["meta"]
    model = create_model(
        meta["arch"],
        num_classes=meta["num_classes"],
        proj_dim=meta["proj_dim"],
        **(meta.get("arch_kwargs") or {}),
    )
    model.load_state_dict(state["model"])
    return model.eval()
