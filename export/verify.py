"""Checks run after every export: ``onnx.checker``, then ONNX Runtime against PyTorch on real images."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

__all__ = ["ParityResult", "ParityError", "check_onnx", "check_parity"]


class ParityError(RuntimeError):
    """ONNX Runtime and PyTorch disagree beyond the tolerance."""


@dataclass
class ParityResult:
    """Largest absolute logit difference and argmax agreement per batch size."""

    max_abs_diff: float
    argmax_agree: bool
    per_batch: dict[int, float]
    tolerance: float
    provider: str

    def summary(self) -> str:
        sizes = ", ".join(f"b={b}: {d:.2e}" for b, d in sorted(self.per_batch.items()))
        verdict = "OK" if self.max_abs_diff <= self.tolerance and self.argmax_agree else "FAILED"
        return (
            f"parity {verdict}: max |Δlogit| = {self.max_abs_diff:.3e} (tolerance {self.tolerance:.0e}), "
            f"argmax identical: {self.argmax_agree} [{sizes}] on {self.provider}"
        )


def check_onnx(path: str | Path) -> onnx.ModelProto:
    """Run ``onnx.checker`` with full shape inference; returns the loaded model."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    return model


def check_parity(
    onnx_path: str | Path,
    torch_module: torch.nn.Module,
    images: np.ndarray,
    batch_sizes: Sequence[int] = (1, 2, 7, 32),
    tolerance: float = 1e-4,
) -> ParityResult:
    """Compare ONNX Runtime (CPU) with the PyTorch export module on ``images`` (uint8 ``[N, H, W, 3]``).

    Each batch size runs over consecutive slices of ``images``. Raises :class:`ParityError` with the numbers
    when the largest difference exceeds ``tolerance`` or any argmax differs.
    """
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    torch_module = torch_module.eval().cpu()
    per_batch: dict[int, float] = {}
    agree = True
    for b in batch_sizes:
        n = min(len(images), max(b, (len(images) // b) * b))
        if n < b:
            continue
        worst = 0.0
        for start in range(0, n - b + 1, b):
            chunk = images[start : start + b]  # [b, H, W, 3] uint8
            got = session.run(["logits"], {"images": chunk})[0]  # [b, C]
            with torch.no_grad():
                ref = torch_module(torch.from_numpy(chunk))
            ref = (ref[0] if isinstance(ref, tuple) else ref).numpy()
            worst = max(worst, float(np.max(np.abs(got - ref))))
            agree &= bool(np.array_equal(got.argmax(axis=1), ref.argmax(axis=1)))
        per_batch[b] = worst
    result = ParityResult(max(per_batch.values()), agree, per_batch, tolerance, "CPUExecutionProvider")
    if result.max_abs_diff > tolerance or not agree:
        raise ParityError(result.summary())
    return result
