"""Triton-compatible model repository: ``NAME/config.pbtxt``, ``NAME/labels.txt``, ``NAME/N/model.onnx``,
``NAME/N/rescom.json``. The same folder loads in the ResCom service and in Triton unchanged."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "MODEL_NAME_PATTERN",
    "list_versions",
    "next_version",
    "version_dir",
    "render_config_pbtxt",
    "write_metadata",
]

MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ONNX_TO_TRITON = {"UINT8": "TYPE_UINT8", "FP32": "TYPE_FP32", "FP16": "TYPE_FP16"}


def _check_name(name: str) -> None:
    if not MODEL_NAME_PATTERN.match(name):
        raise ValueError(
            f"model name {name!r} is not allowed: use 1-64 letters, digits, '_', '-' or '.', starting with a "
            "letter or digit"
        )


def list_versions(repository: str | Path, name: str) -> list[int]:
    """Version numbers present for ``name`` (Triton's rule: numeric folders not starting with 0)."""
    model_dir = Path(repository) / name
    if not model_dir.is_dir():
        return []
    return sorted(
        int(p.name) for p in model_dir.iterdir() if p.is_dir() and re.fullmatch(r"[1-9][0-9]*", p.name)
    )


def next_version(repository: str | Path, name: str) -> int:
    """One above the highest existing version (1 for a new model)."""
    versions = list_versions(repository, name)
    return (versions[-1] + 1) if versions else 1


def version_dir(repository: str | Path, name: str, version: int, force: bool = False) -> Path:
    """Create ``repository/name/version``; an existing version is refused unless ``force``."""
    _check_name(name)
    if version < 1:
        raise ValueError(
            f"version must be a positive integer (Triton ignores 0 and non-numeric folders), got {version}"
        )
    path = Path(repository) / name / str(version)
    if path.exists() and any(path.iterdir()) and not force:
        raise FileExistsError(
            f"{path} already exists; pass --force to overwrite it, or --version {next_version(repository, name)} "
            "(or omit --version) to add a new version"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def render_config_pbtxt(
    name: str,
    inputs: Sequence[Mapping[str, Any]],
    outputs: Sequence[Mapping[str, Any]],
    max_batch_size: int,
    max_queue_delay_us: int = 2000,
    preferred_batch_sizes: Sequence[int] = (),
    label_file: str | None = "labels.txt",
) -> str:
    """Triton ``config.pbtxt`` text for an ONNX Runtime model with a dynamic batch axis.

    ``shape`` entries in ``inputs``/``outputs`` include the batch axis (-1), which Triton leaves out of ``dims``
    when ``max_batch_size > 0``.
    """

    def tensor(t: Mapping[str, Any], with_label: bool) -> str:
        dims = ", ".join(str(d) for d in list(t["shape"])[1:])
        label = f'\n    label_filename: "{label_file}"' if with_label and label_file else ""
        return (
            f'  {{\n    name: "{t["name"]}"\n    data_type: {ONNX_TO_TRITON[t["datatype"]]}\n'
            f"    dims: [ {dims} ]{label}\n  }}"
        )

    ins = ",\n".join(tensor(t, False) for t in inputs)
    outs = ",\n".join(tensor(t, t["name"] == "logits") for t in outputs)
    preferred = ""
    if preferred_batch_sizes:
        preferred = f"\n  preferred_batch_size: [ {', '.join(str(b) for b in preferred_batch_sizes)} ]"
    return (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n'
        f"input [\n{ins}\n]\noutput [\n{outs}\n]\n"
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {max_queue_delay_us}{preferred}\n}}\n"
        "instance_group [ { kind: KIND_AUTO, count: 1 } ]\n"
        "version_policy: { latest: { num_versions: 1 } }\n"
    )


def write_metadata(path: Path, metadata: Mapping[str, Any]) -> None:
    """Write ``rescom.json`` (pretty, sorted top-level order kept as given)."""
    path.write_text(json.dumps(metadata, indent=2) + "\n")
