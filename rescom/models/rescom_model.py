"""The ResCom network: shared encoder, projection MLP and linear classifier; plus the export view."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rescom.models.heads import LinearClassifier, ProjectionHead

__all__ = ["ResComModel", "InferenceModel"]


class ResComModel(nn.Module):
    """Encoder + projector + classifier (one network shared by both Siamese views, no momentum encoder).

    Args:
        encoder: module mapping ``[N, 3, H, W]`` to features h ``[N, D]``.
        feat_dim: D, the encoder's output size.
        num_classes: C.
        proj_dim: d, the contrastive embedding size.
        arch: registry name of the encoder (recorded for checkpoints/export).
        arch_kwargs: options the encoder was built with (recorded for checkpoints/export).

    Attributes:
        encoder, projector (:class:`ProjectionHead`, D -> D -> d), classifier (:class:`LinearClassifier`,
        D -> C), feat_dim, num_classes, proj_dim, arch, arch_kwargs.
    """

    def __init__(
        self,
        encoder: nn.Module,
        feat_dim: int,
        num_classes: int,
        proj_dim: int = 128,
        arch: str = "custom",
        arch_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("feat_dim", feat_dim), ("num_classes", num_classes), ("proj_dim", proj_dim)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.encoder = encoder
        self.projector = ProjectionHead(feat_dim, proj_dim)
        self.classifier = LinearClassifier(feat_dim, num_classes)
        self.feat_dim = int(feat_dim)
        self.num_classes = int(num_classes)
        self.proj_dim = int(proj_dim)
        self.arch = arch
        self.arch_kwargs = dict(arch_kwargs or {})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run all three heads.

        Args:
            x: images, float ``[N, 3, H, W]`` (contiguous or channels_last).

        Returns:
            ``dict(logits=[N, C], embedding=[N, d] (unit L2 norm), features=[N, D])``.
        """
        features = self.encoder(x)  # [N, D]
        logits = self.classifier(features)  # [N, C]
        embedding = F.normalize(self.projector(features), dim=1)  # [N, d]
        return {"logits": logits, "embedding": embedding, "features": features}

    def extra_repr(self) -> str:
        """Architecture, feature dim D, classes C and projection dim d in the module's repr."""
        return f"arch={self.arch!r}, D={self.feat_dim}, C={self.num_classes}, d={self.proj_dim}"


class InferenceModel(nn.Module):
    """Export/serving view of a :class:`ResComModel`: encoder + classifier only (no projector).

    Shares (does not copy) the encoder and classifier modules of ``model``.

    Args:
        model: a trained :class:`ResComModel` (anything with ``encoder`` and ``classifier``).
        with_features: also return the encoder features.

    Forward:
        ``x`` float ``[N, 3, H, W]`` -> raw logits z ``[N, C]`` (no prior applied), or
        ``(logits [N, C], features [N, D])`` when ``with_features``.
    """

    def __init__(self, model: nn.Module, with_features: bool = False) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.classifier = model.classifier
        self.with_features = bool(with_features)
        self.num_classes = int(getattr(model, "num_classes", self.classifier.out_features))
        self.feat_dim = int(getattr(model, "feat_dim", self.classifier.in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits ``z`` ``[N, C]`` of normalised images ``[N, 3, H, W]``.

        With ``with_features`` the result is ``(z [N, C], features [N, D])``.
        """
        features = self.encoder(x)  # [N, D]
        logits = self.classifier(features)  # [N, C]
        if self.with_features:
            return logits, features
        return logits
