"""The exported graph: uint8 NHWC RGB images in, raw Balanced-Softmax logits out.

Preprocessing that depends on the training run (scale to [0, 1], normalise with the training mean/std,
NHWC → NCHW) lives inside the graph, so a client only decodes, resizes and centre-crops
(:func:`rescom.preprocess.resize_center_crop`). Training-only parts (projection MLP, queue) are left out.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from rescom.models import InferenceModel

__all__ = ["ExportModule", "export_onnx", "DEFAULT_OPSET"]

DEFAULT_OPSET = 17


class ExportModule(nn.Module):
    """``images`` uint8 ``[N, H, W, 3]`` → ``logits`` float32 ``[N, C]`` (and ``features`` ``[N, D]``).

    Args:
        model: the trained :class:`~rescom.models.rescom_model.ResComModel` (encoder and classifier are used).
        mean: per-channel RGB normalisation mean ``μ`` of the training run (``[3]``, for inputs in [0, 1]).
        std: per-channel RGB normalisation standard deviation ``σ`` (``[3]``).
        with_features: add a second output ``features`` ``[N, D]`` (the encoder's embedding).
        half: run the network in float16 (inputs stay uint8, outputs are cast back to float32).
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        with_features: bool = False,
        half: bool = False,
    ) -> None:
        super().__init__()
        self.net = InferenceModel(model, with_features=with_features)
        self.with_features = with_features
        self.half = half
        # Fold /255 and (x - mean) / std into one multiply-add: x · (1 / (255 σ)) − μ / σ.
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t))
        self.register_buffer("shift", -mean_t / std_t)

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Normalise uint8 ``[N, H, W, 3]`` images in the graph and return raw logits ``z`` ``[N, C]``.

        With ``with_features`` the result is ``(logits [N, C], features [N, D])``, both float32.
        """
        x = images.permute(0, 3, 1, 2).float()  # [N, 3, H, W]
        x = x * self.scale + self.shift  # normalised, float32
        if self.half:
            x = x.half()
        out = self.net(x)
        if self.with_features:
            logits, features = out
            return logits.float(), features.float()  # [N, C], [N, D]
        return out.float()  # [N, C]


def export_onnx(
    module: ExportModule,
    path: str | Path,
    image_size: int,
    opset: int = DEFAULT_OPSET,
) -> bytes:
    """Trace ``module`` to a self-contained ONNX file with a dynamic batch axis; returns the file's bytes."""
    module = module.eval().cpu()
    example = torch.zeros(2, image_size, image_size, 3, dtype=torch.uint8)
    outputs = ["logits", "features"] if module.with_features else ["logits"]
    dynamic = {"images": {0: "batch"}, **{name: {0: "batch"} for name in outputs}}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the torch.export one, which needs onnxscript and
        # writes external data for large models; the TorchScript path gives one self-contained file.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        torch.onnx.export(
            module,
            (example,),
            buffer,
            dynamo=False,
            input_names=["images"],
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
        )
    data = buffer.getvalue()
    Path(path).write_bytes(data)
    return data
