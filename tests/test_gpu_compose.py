"""The GPU compose override asks for the GPU and for `--device cuda` (never a silent CPU run)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NVIDIA_GPU = {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}


def _devices(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def test_gpu_override_reserves_the_gpu_for_both_services():
    gpu = yaml.safe_load((ROOT / "compose.gpu.yaml").read_text())["services"]
    for name in ("api", "train"):
        assert _devices(gpu[name]) == [NVIDIA_GPU], name
    assert gpu["api"]["build"]["args"]["RUNTIME"] == "gpu"
    assert gpu["api"]["environment"]["RESCOM_PROVIDERS"] == "${RESCOM_PROVIDERS:-cuda}"
    assert gpu["train"]["environment"]["TRAIN_DEVICE"] == "${TRAIN_DEVICE:-cuda}"
    base = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    assert not _devices(base["api"]) and not _devices(base["train"])  # compose.yaml runs on any host


def test_train_job_passes_the_device_to_train_py(tmp_path: Path):
    """docker/train_and_export.sh, run for real with a stand-in `python` that records its arguments."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text('#!/bin/sh\necho "$@" >> "$CALLS"\n')
    (fake / "python").chmod(0o755)
    (tmp_path / "models" / "m").mkdir(parents=True)
    env = {
        "PATH": f"{fake}:{os.environ['PATH']}",
        "CALLS": str(tmp_path / "calls"),
        "RUNS_DIR": str(tmp_path / "runs"),
        "RESCOM_MODEL_REPOSITORY": str(tmp_path / "models"),
        "MODEL_NAME": "m",
        "TRAIN_DEVICE": "cuda",
    }
    script = str(ROOT / "docker" / "train_and_export.sh")
    subprocess.run(["sh", script, "--epochs", "1"], env=env, check=True, capture_output=True, timeout=60)
    train_call = (tmp_path / "calls").read_text().splitlines()[0]
    assert train_call.startswith("training/train.py") and train_call.endswith("--device cuda --epochs 1")
    (tmp_path / "calls").unlink()
    env.pop("TRAIN_DEVICE")
    subprocess.run(["sh", script], env=env, check=True, capture_output=True, timeout=60)
    assert "--device" not in (tmp_path / "calls").read_text().splitlines()[0]


def _compose_binary() -> str | None:
    """A Compose v2 binary: `docker compose`'s plugin (local-docker.sh installs one) or the tools venv's."""
    candidates = [
        os.environ.get("RESCOM_COMPOSE", ""),
        str(
            Path(os.environ.get("DOCKER_CONFIG", "~/.docker")).expanduser() / "cli-plugins" / "docker-compose"
        ),
        "/var/tmp/ctr-state/docker-config/cli-plugins/docker-compose",
        *sorted(
            str(p) for p in (ROOT / ".venv-tools").glob("lib/python*/site-packages/compose/docker-compose")
        ),
        shutil.which("docker-compose") or "",
    ]
    for path in candidates:
        if path and Path(path).is_file() and os.access(path, os.X_OK):
            probe = subprocess.run([path, "version"], capture_output=True, text=True, timeout=30)
            if probe.returncode == 0 and re.search(r"version v?2\.", probe.stdout):
                return path
    return None


def test_merged_gpu_config_with_compose():
    """`docker compose config` (real Compose v2, no engine needed) merges the override as intended."""
    compose = _compose_binary()
    if compose is None:
        pytest.skip("no Compose v2 binary here (CI's scripts/lint_containers.sh validates the files too)")
    cmd = [
        compose,
        "-f",
        "compose.yaml",
        "-f",
        "compose.gpu.yaml",
        "--profile",
        "train",
        "config",
        "--format",
        "json",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESCOM_", "TRAIN_"))}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True)
    services = json.loads(out.stdout)["services"]
    for name in ("api", "train"):
        devices = _devices(services[name])
        assert (
            len(devices) == 1 and devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
        )
    assert services["api"]["environment"]["RESCOM_PROVIDERS"] == "cuda"
    assert services["api"]["build"]["args"]["RUNTIME"] == "gpu"
    assert services["train"]["environment"]["TRAIN_DEVICE"] == "cuda"
