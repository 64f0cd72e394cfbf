"""torchvision ResNet-50 / ResNeXt-50 (32x4d) backbones without fc: ``[N, 3, H, W] -> [N, 2048]`` (D = 2048).

ImageNet-pretrained weights are never downloaded: pass a LOCAL file through
``create_model(..., pretrained_weights=PATH)``, e.g. torchvision's ``resnet50-0676ba61.pth`` or
``resnext50_32x4d-7cdf4587.pth``. The backbone keys are loaded strictly and the ``fc.*`` keys are ignored
(:func:`rescom.models._registry.load_encoder_weights`). The encoder's state-dict keys are torchvision's
(``conv1.weight``, ``layer1.0.bn1.weight``, ...), so those files load as they are.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision.models as tvm
from torch import nn

from rescom.models._registry import register_model

__all__ = ["TorchvisionResNet", "resnet50", "resnext50_32x4d"]


class TorchvisionResNet(nn.Module):
    """A torchvision ResNet with its fc layer removed.

    Args:
        factory: torchvision constructor (``torchvision.models.resnet50``, ...), called with ``weights=None``.
        zero_init_residual: forwarded to torchvision (last BN of each residual block starts at zero).

    Attributes:
        feat_dim: D (2048 for ResNet-50 and ResNeXt-50).
    """

    def __init__(self, factory: Callable[..., tvm.ResNet], zero_init_residual: bool = False) -> None:
        super().__init__()
        net = factory(weights=None, zero_init_residual=zero_init_residual)
        self.feat_dim = int(net.fc.in_features)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.avgpool = net.avgpool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``[N, 2048]`` of images ``[N, 3, H, W]`` (the torchvision trunk without its ``fc``)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # [N, 64, H/4, W/4]
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # [N, 2048, H/32, W/32]
        return torch.flatten(self.avgpool(x), 1)  # [N, 2048]


@register_model("resnet50")
def resnet50(zero_init_residual: bool = False) -> TorchvisionResNet:
    """ResNet-50 encoder (D = 2048)."""
    return TorchvisionResNet(tvm.resnet50, zero_init_residual=zero_init_residual)


@register_model("resnext50_32x4d")
def resnext50_32x4d(zero_init_residual: bool = False) -> TorchvisionResNet:
    """ResNeXt-50 32x4d encoder (D = 2048)."""
    return TorchvisionResNet(tvm.resnext50_32x4d, zero_init_residual=zero_init_residual)
