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
    """Largest absolute logit difference and argmax agreement per batch size.

    The tolerance is relative to the size of the logits: float32 rounding grows with them, so the allowed
    difference is ``tolerance * max(1, max |z|)`` (``scale`` is that factor).
    """

    max_abs_diff: float
    argmax_agree: bool
    per_batch: dict[int, float]
    tolerance: float
    provider: str
    scale: float = 1.0

    @property
    def allowed(self) -> float:
        """The largest difference accepted: ``tolerance * scale``."""
        return self.tolerance * self.scale

    @property
    def ok(self) -> bool:
        """Within the tolerance, and the same class wins wherever the reference's top two are not tied."""
        return self.max_abs_diff <= self.allowed and self.argmax_agree

    def summary(self) -> str:
        """One line: verdict, largest difference against the allowed one, per batch size."""
        sizes = ", ".join(f"b={b}: {d:.2e}" for b, d in sorted(self.per_batch.items()))
        return (
            f"parity {'OK' if self.ok else 'FAILED'}: max |Δlogit| = {self.max_abs_diff:.3e} (tolerance "
            f"{self.tolerance:.0e} x max(1, max |z|) = {self.allowed:.1e}), argmax identical: {self.argmax_agree} "
            f"[{sizes}] on {self.provider}"
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
    when the largest difference exceeds ``tolerance * max(1, max |z|)`` or an argmax differs on an image whose
    reference top-two margin is wider than twice that (closer margins are ties within rounding).
    """
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    torch_module = torch_module.eval().cpu()
    per_batch: dict[int, float] = {}
    pairs: list[tuple[np.ndarray, np.ndarray]] = []  # (ONNX Runtime, torch) logits [b, C]
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
            pairs.append((got, ref))
        per_batch[b] = worst
    scale = max(1.0, max(float(np.max(np.abs(ref))) for _, ref in pairs))
    agree = all(_argmax_agrees(got, ref, 2 * tolerance * scale) for got, ref in pairs)
    result = ParityResult(max(per_batch.values()), agree, per_batch, tolerance, "CPUExecutionProvider", scale)
    if not result.ok:
        raise ParityError(result.summary())
    return result


def _argmax_agrees(got: np.ndarray, ref: np.ndarray, tie: float) -> bool:
    """Same argmax on every row whose reference top-two margin exceeds ``tie`` (``got``, ``ref``: ``[b, C]``)."""
    if ref.shape[1] < 2:
        return True
    top2 = np.sort(ref, axis=1)[:, -2:]  # [b, 2]
    decided = (top2[:, 1] - top2[:, 0]) > tie  # [b]
    return bool(np.array_equal(got.argmax(axis=1)[decided], ref.argmax(axis=1)[decided]))
