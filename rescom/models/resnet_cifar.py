"""CIFAR ResNets (He et al. 2016, Sec. 4.2): depth 6n+2, three stages of widths 16/32/64, D = 64.

Shortcuts where the shape changes (stages 2 and 3, stride 2, doubling width):

* ``shortcut="A"`` (default): the parameter-free option A of the paper, as used by the CIFAR-LT literature
  (LDAM-DRW, PaCo, ResCom): subsample the input by 2 in space and zero-pad the new channels.
* ``shortcut="B"``: a projection, 1x1 convolution with stride 2 followed by BatchNorm.

All depths build (the official ResCom code's ResNet-20/44/56/110 constructors were broken). The encoder
returns the globally average-pooled feature h ``[N, 64]``; there is no fc layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rescom.models._registry import register_model

__all__ = ["CifarResNet", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]

SHORTCUTS = ("A", "B")


class _PadShortcut(nn.Module):
    """Option-A shortcut: ``x[:, :, ::stride, ::stride]`` plus zero channels up to ``out_planes``."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        extra = out_planes - in_planes
        self.pad_front, self.pad_back = extra // 2, extra - extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]  # [N, C_in, H/s, W/s]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))  # [N, C_out, H/s, W/s]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (ReLU after the sum)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = _PadShortcut(in_planes, planes, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet encoder without fc: ``[N, 3, H, W] -> [N, 64]`` (any H, W >= 4; designed for 32x32).

    Args:
        depth: 6n+2 (20, 32, 44, 56, 110, ...).
        shortcut: ``"A"`` (zero-padding identity, parameter-free) or ``"B"`` (1x1 conv + BN projection).
        zero_init_residual: initialise the last BN of every block to zero (each block starts as identity).

    Attributes:
        feat_dim: D = 64.
    """

    widths = (16, 32, 64)

    def __init__(self, depth: int = 32, shortcut: str = "A", zero_init_residual: bool = False) -> None:
        super().__init__()
        if isinstance(depth, bool) or int(depth) != depth or depth < 8 or (depth - 2) % 6:
            raise ValueError(
                f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110), got {depth!r}"
            )
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
        n = (int(depth) - 2) // 6
        self.depth = int(depth)
        self.feat_dim = self.widths[-1]
        self.conv1 = nn.Conv2d(3, self.widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.widths[0])
        in_planes = self.widths[0]
        stages = []
        for i, planes in enumerate(self.widths):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``[N, 64]`` of images ``[N, 3, H, W]`` (after global average pooling)."""
        x = F.relu(self.bn1(self.conv1(x)))  # [N, 16, H, W]
        x = self.layer1(x)  # [N, 16, H, W]
        x = self.layer2(x)  # [N, 32, H/2, W/2]
        x = self.layer3(x)  # [N, 64, H/4, W/4]
        return torch.flatten(self.pool(x), 1)  # [N, 64]; flatten is safe for channels_last


def _builder(depth: int):
    def build(shortcut: str = "A", zero_init_residual: bool = False) -> CifarResNet:
        return CifarResNet(depth, shortcut=shortcut, zero_init_residual=zero_init_residual)

    build.__name__ = f"resnet{depth}"
    build.__doc__ = f"CIFAR ResNet-{depth} encoder (D = 64); see :class:`CifarResNet`."
    return build


resnet20 = register_model("resnet20")(_builder(20))
resnet32 = register_model("resnet32")(_builder(32))
resnet44 = register_model("resnet44")(_builder(44))
resnet56 = register_model("resnet56")(_builder(56))
resnet110 = register_model("resnet110")(_builder(110))
