"""Heads on top of the encoder feature h [N, D]: the contrastive projector and the linear classifier."""

from __future__ import annotations

from torch import nn

__all__ = ["ProjectionHead", "LinearClassifier"]


class ProjectionHead(nn.Sequential):
    """Projection MLP ``Linear(D, D) -> BatchNorm1d(D) -> ReLU -> Linear(D, d)`` (SupCon/ResCom style).

    The output is NOT normalised here; :class:`~rescom.models.rescom_model.ResComModel` L2-normalises it.

    Args:
        in_dim: encoder feature size D.
        out_dim: embedding size d.
        hidden_dim: hidden width (default D).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None) -> None:
        hidden = in_dim if hidden_dim is None else hidden_dim
        super().__init__(
            nn.Linear(in_dim, hidden),  # [N, D] -> [N, D]
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out_dim),  # [N, D] -> [N, d]
        )
        self.in_dim = in_dim
        self.out_dim = out_dim


class LinearClassifier(nn.Linear):
    """Linear classifier ``[N, D] -> [N, C]`` with bias (the ResCom/Balanced-Softmax logits z).

    A plain ``nn.Linear`` subclass, so its state dict keys are ``weight`` [C, D] and ``bias`` [C].

    Args:
        in_dim: feature dimension D.
        num_classes: number of classes C.
    """

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__(in_dim, num_classes, bias=True)
