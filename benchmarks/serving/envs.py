"""One virtual environment per server, built from ``requirements-<name>.txt`` (exact pins) under ``.envs/``.

An environment is rebuilt only when its requirements file changes (its SHA-256 is stamped inside). Install
output goes to ``.envs/<name>.log``; a failure is reported with the log's last lines instead of raising, so
the harness can record why a peer could not run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.serving.config import ENVS_DIR, SERVING_DIR

__all__ = ["EnvResult", "ensure_env", "package_versions"]

STAMP = ".requirements.sha256"


@dataclass(frozen=True)
class EnvResult:
    """The environment's interpreter, or why there is none."""

    name: str
    python: Path | None
    error: str | None = None


def _base_python() -> str:
    """The interpreter the harness itself was made from (not a venv's wrapper)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def ensure_env(name: str, timeout_s: float = 1200.0) -> EnvResult:
    """Create or reuse ``.envs/<name>`` with the pinned requirements; never raises for install failures."""
    req = SERVING_DIR / f"requirements-{name}.txt"
    if not req.is_file():
        return EnvResult(name, None, f"missing {req.name}")
    digest = hashlib.sha256(req.read_bytes()).hexdigest()
    env_dir = ENVS_DIR / name
    python = env_dir / "bin" / "python"
    stamp = env_dir / STAMP
    if python.exists() and stamp.is_file() and stamp.read_text().strip() == digest:
        return EnvResult(name, python)
    ENVS_DIR.mkdir(parents=True, exist_ok=True)
    if env_dir.exists():
        shutil.rmtree(env_dir)
    log = ENVS_DIR / f"{name}.log"
    print(f"[envs] building {env_dir.relative_to(SERVING_DIR)} from {req.name} (log: {log.name})", flush=True)
    steps = [
        [_base_python(), "-m", "venv", str(env_dir)],
        [str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"],
        [str(python), "-m", "pip", "install", "-q", "-r", str(req)],
    ]
    with log.open("w") as out:
        for cmd in steps:
            try:
                rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s).returncode
            except subprocess.TimeoutExpired:
                rc = -1
            if rc != 0:
                tail = " | ".join(log.read_text().strip().splitlines()[-3:])[-400:]
                return EnvResult(name, None, f"`{' '.join(cmd[-3:])}` failed (rc {rc}): {tail}")
    stamp.write_text(digest + "\n")
    return EnvResult(name, python)


def package_versions(python: Path, names: list[str]) -> dict[str, str]:
    """Installed versions of ``names`` in the environment of ``python`` (missing ones are left out)."""
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    try:
        res = subprocess.run(
            [str(python), "-c", code, *names], capture_output=True, text=True, timeout=60, check=True
        )
    except (subprocess.SubprocessError, OSError):
        return {}
    return json.loads(res.stdout)
