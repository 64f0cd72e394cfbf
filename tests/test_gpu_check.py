"""The GPU check's own pieces on the CPU: its argument checker, its refusals, its report, its environment rules.

The whole check runs in CI as `bash scripts/gpu_check.sh --dry-run` (.ci/run); these tests cover the parts that
decide pass or fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_env  # noqa: E402
import gpu_report  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
import serve_load  # noqa: E402


def _check_args(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "scripts/check_args.py", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_args_accepts_real_flags_and_rejects_unknown_ones():
    ok = _check_args(
        "scripts/ort_placement.py", "--model-dir", "x", "--providers", "cuda", ":::", "scripts/gpu_env.py"
    )
    assert ok.returncode == 0 and ok.stdout.count("ok: ") == 2
    # the defect of issue 19: serve_load.py had no --providers; a flag a script lacks fails like the real run
    bad = _check_args("scripts/gpu_env.py", "--providers", "cuda")
    assert bad.returncode == 2 and "unrecognized arguments: --providers cuda" in bad.stderr
    bad_value = _check_args("scripts/ort_placement.py", "--model-dir", "x", "--providers", "gpu")
    assert bad_value.returncode == 2 and "invalid choice: 'gpu'" in bad_value.stderr


def test_make_gpu_check_builds_both_environments_and_uses_their_interpreters():
    proc = subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", "gpu-check"],  # no "make[1]: Entering" under `make test`
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = proc.stdout.splitlines()
    assert ".venv/bin/python -m pip install -q -e '.[dev]'" in lines  # make setup first
    assert ".venv-gpu/bin/python -m pip install -q -e '.[serve-gpu]'" in lines  # its own environment
    assert not any("venv-gpu" in line and "[dev]" in line for line in lines)  # never onnxruntime next to -gpu
    assert lines[-1] == "PYTHON=.venv/bin/python GPU_PYTHON=.venv-gpu/bin/python bash scripts/gpu_check.sh"


def test_gpu_check_refuses_unknown_arguments():
    proc = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--fast"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2 and "unknown argument '--fast'" in proc.stderr


def test_environment_requirements():
    cpu_box = {
        "torch": {"torch": "2.14.1", "cuda_available": False},
        "onnxruntime": {"providers": ["CPUExecutionProvider"], "distributions": ["onnxruntime"]},
    }
    assert gpu_env.failures(cpu_box, []) == []
    problems = gpu_env.failures(cpu_box, ["torch-cuda", "ort-cuda"])
    assert len(problems) == 2 and "torch does not see a CUDA device" in problems[0]
    assert "no CUDAExecutionProvider" in problems[1]
    broken = {
        "torch": {},
        "onnxruntime": {
            "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
            "distributions": ["onnxruntime", "onnxruntime-gpu"],
            "preload_dlls": "failed: libcudnn.so.9: cannot open shared object file",
        },
    }
    problems = gpu_env.failures(broken, ["ort-cuda"])
    assert any("cannot load its CUDA libraries" in p for p in problems)
    assert any("both installed" in p for p in problems)


def test_report_shows_missing_steps_as_missing(tmp_path: Path):
    (tmp_path / "steps.tsv").write_text(
        "train-amp\tfailed (exit 1)\t12\t\nserve-tensorrt\tskipped\t0\tnot installed\n"
    )
    (tmp_path / "ddp.json").write_text(json.dumps({"backend": "gloo", "queue_identical": True}))
    assert gpu_report.main(["--run-dir", str(tmp_path), "--out", str(tmp_path / "gpu"), "--dry-run"]) == 0
    page = (tmp_path / "gpu.md").read_text()
    assert "CPU DRY RUN" in page
    assert (
        "| train-amp | failed (exit 1) | 12 |" in page
        and "| serve-tensorrt | skipped | 0 | not installed |" in page
    )
    assert page.count("Not measured (the step failed or did not run).") == 2  # training table, serving table
    assert '"queue_identical": true' in page
    assert json.loads((tmp_path / "gpu.json").read_text())["ddp"]["backend"] == "gloo"


def test_serve_load_baseline_uses_the_services_provider_and_layout(tmp_path: Path):
    """The raw ORT baseline gets the provider list the service builds, and the service's GPU layout (1 x 1)."""
    meta = json.loads((ROOT / "models/digits_lt/1/rescom.json").read_text())
    onnx = ROOT / "models/digits_lt/1/model.onnx"
    assert serve_load.provider_entries("cpu", onnx, meta, 32) == ["CPUExecutionProvider"]
    gpu_args = serve_load.parse_args(["--providers", "cuda"])
    assert serve_load.layout(gpu_args, {}) == (1, 1)
    assert serve_load.layout(gpu_args, {"RESCOM_INSTANCES": "2"})[0] == 2
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(
            SystemExit, match=r"^\[bench\] providers=cuda but this onnxruntime build has no CUDA"
        ):
            serve_load.provider_entries("cuda", onnx, meta, 32)
    rate, provider = serve_load.raw_ort(
        onnx, serve_load_images(), 4, 1, False, 8, providers=["CPUExecutionProvider"]
    )
    bound, _ = serve_load.raw_ort(
        onnx, serve_load_images(), 4, 1, False, 8, 1, ["CPUExecutionProvider"], True
    )
    assert provider == "CPUExecutionProvider" and rate > 0 and bound > 0


def serve_load_images():
    import numpy as np

    return np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
