"""CIFAR ResNets of He et al. (2016), Sec. 4.2: ResNet20/32/56 with parameter-free shortcuts.

Three stages of ``n`` basic blocks with 16/32/64 channels on 32x32 inputs, global average
pooling and a linear classifier; ``6n + 2`` layers.  Where a block changes the width or
resolution, the shortcut is "option A": subsample by 2 and zero-pad the new channels, so it
has no parameters (this is the model Table 1 of the structured-convolutions paper reports:
ResNet20 has 0.27M parameters, ResNet56 0.85M).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CifarResNet", "cifar_resnet20", "cifar_resnet32", "cifar_resnet56"]


class PadShortcut(nn.Module):
    """Option-A shortcut: ``x[:, :, ::stride, ::stride]`` zero-padded to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride, self.extra = stride, out_channels - in_channels

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra - half))


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        changes = stride != 1 or in_channels != out_channels
        self.shortcut = PadShortcut(in_channels, out_channels, stride) if changes else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def init_weights(model: nn.Module) -> None:
    """He et al.'s init, in place: Kaiming-normal convs (fan-out) and classifier."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight)


class CifarResNet(nn.Module):
    """``depth = 6n + 2``; stages are ``layer1..layer3`` (torchvision naming)."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_chans: int = 3, widths=(16, 32, 64)) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CifarResNet: depth={depth} must be 6n+2 (20, 32, 44, 56, 110, ...)")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        channels, stages = widths[0], []
        for i, width in enumerate(widths):
            layers = []
            for j in range(blocks):
                layers.append(BasicBlock(channels, width, 2 if (i > 0 and j == 0) else 1))
                channels = width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def cifar_resnet20(**kwargs) -> CifarResNet:
    return CifarResNet(20, **kwargs)


def cifar_resnet32(**kwargs) -> CifarResNet:
    return CifarResNet(32, **kwargs)


def cifar_resnet56(**kwargs) -> CifarResNet:
    return CifarResNet(56, **kwargs)
