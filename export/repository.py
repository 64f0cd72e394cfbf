"""Where export writes: a new version folder. The format itself is owned by :mod:`rescom.model_repository`."""

from __future__ import annotations

from pathlib import Path

from rescom.model_repository import check_model_name, next_version, version_path

__all__ = ["version_dir"]


def version_dir(repository: str | Path, name: str, version: int, force: bool = False) -> Path:
    """Create ``repository/name/version``; an existing version is refused unless ``force``."""
    check_model_name(name)
    if version < 1:
        raise ValueError(
            f"version must be a positive integer (Triton ignores 0 and non-numeric folders), got {version}"
        )
    path = version_path(repository, name, version)
    if path.exists() and any(path.iterdir()) and not force:
        raise FileExistsError(
            f"{path} already exists; pass --force to overwrite it, or --version {next_version(repository, name)} "
            "(or omit --version) to add a new version"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path
