"""Environment report for the GPU check: driver, CUDA, cuDNN, torch, ONNX Runtime providers, TensorRT.

    python scripts/gpu_env.py [--require torch-cuda|ort-cuda ...] [--json FILE]

Reports whatever this interpreter has: the training venv has torch (and CPU onnxruntime), the GPU serving venv
has onnxruntime-gpu (and no torch). ``--require torch-cuda`` fails (exit 1) unless torch sees a CUDA device;
``--require ort-cuda`` fails unless onnxruntime lists ``CUDAExecutionProvider`` and its CUDA libraries load.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata as md
import io
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REQUIREMENTS = ("torch-cuda", "ort-cuda")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--require", action="append", default=[], choices=REQUIREMENTS, help="fail unless present")
    p.add_argument("--json", default=None, help="also write the report to this file")
    return p.parse_args(argv)


def nvidia_smi() -> dict[str, Any]:
    """Driver version, GPU names and memory from ``nvidia-smi`` (absent on CPU machines)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"nvidia_smi": None}
    query = "--query-gpu=name,driver_version,memory.total,compute_cap"
    try:
        out = subprocess.run(
            [exe, query, "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return {"nvidia_smi": f"failed: {err}"}
    return {
        "nvidia_smi": [line.strip() for line in out.stdout.splitlines() if line.strip()] or out.stderr.strip()
    }


def torch_report() -> dict[str, Any]:
    """torch, its CUDA and cuDNN, the devices and bf16 support; empty when torch is not installed."""
    try:
        import torch
    except ImportError:
        return {}
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["cudnn"] = torch.backends.cudnn.version()
        info["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        info["bf16"] = torch.cuda.is_bf16_supported()
        info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    return info


def ort_report() -> dict[str, Any]:
    """onnxruntime distribution, providers, ``print_debug_info()``, CUDA/TensorRT library loading."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {}
    dists = sorted(
        n for n in ("onnxruntime", "onnxruntime-gpu") if _has_dist(n)
    )  # both at once = the last one installed silently wins
    info: dict[str, Any] = {
        "onnxruntime": ort.__version__,
        "distributions": dists,
        "providers": ort.get_available_providers(),
        "device": ort.get_device(),
    }
    if "CUDAExecutionProvider" in info["providers"] and hasattr(ort, "preload_dlls"):
        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf):
                ort.preload_dlls()
            info["preload_dlls"] = "ok"
        except Exception as err:  # noqa: BLE001 (reported, and --require ort-cuda fails on it)
            info["preload_dlls"] = f"failed: {err}"
    if hasattr(ort, "print_debug_info"):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            ort.print_debug_info()
        info["debug_info"] = buf.getvalue().strip()
    from service.providers import tensorrt_libraries

    info["tensorrt_library"] = tensorrt_libraries()
    return info


def _has_dist(name: str) -> bool:
    try:
        md.version(name)
    except md.PackageNotFoundError:
        return False
    return True


def failures(report: dict[str, Any], required: list[str]) -> list[str]:
    """One line per requirement that is not met."""
    out = []
    if "torch-cuda" in required and not report.get("torch", {}).get("cuda_available"):
        out.append(
            "torch does not see a CUDA device (torch.cuda.is_available() is False or torch is missing)"
        )
    ort = report.get("onnxruntime", {})
    if "ort-cuda" in required:
        if "CUDAExecutionProvider" not in ort.get("providers", []):
            out.append(f"onnxruntime has no CUDAExecutionProvider (providers: {ort.get('providers')})")
        elif str(ort.get("preload_dlls", "ok")).startswith("failed"):
            out.append(f"onnxruntime cannot load its CUDA libraries: {ort['preload_dlls']}")
        if len(ort.get("distributions", [])) > 1:
            out.append("onnxruntime and onnxruntime-gpu are both installed in this environment")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        **nvidia_smi(),
        "torch": torch_report(),
        "onnxruntime": ort_report(),
    }
    for key, value in report.items():
        if isinstance(value, dict):
            for k, v in value.items():
                if k != "debug_info":
                    print(f"[env] {key}.{k}: {v}")
        else:
            print(f"[env] {key}: {value}")
    if report["onnxruntime"].get("debug_info"):
        print("[env] onnxruntime.print_debug_info():\n" + report["onnxruntime"]["debug_info"])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    problems = failures(report, args.require)
    for line in problems:
        print(f"[env] FAIL: {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
