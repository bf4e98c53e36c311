"""ResNet-20/32/56/110 for CIFAR (He, Zhang, Ren & Sun 2016, section 4.2).

``6n + 2`` layers: a 3x3 convolution with 16 channels, three stages of ``n`` basic blocks
with 16, 32 and 64 channels on 32x32, 16x16 and 8x8 maps, global average pooling and a
linear layer. Shortcuts are the paper's option A (identity, with stride-2 subsampling
and zero-padded channels when the shape changes), so they add no parameters: ResNet-20
has 0.27M parameters, ResNet-32 0.46M, ResNet-56 0.85M and ResNet-110 1.7M, as in the
paper's Table 6 (exact counts for 10 classes: 269,722; 464,154; 853,018; 1,727,962).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class _ShortcutA(nn.Module):
    """Option A: subsample by the stride and zero-pad the new channels."""

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra_channels // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))


class BasicBlock(nn.Module):
    """``conv3x3-BN-ReLU-conv3x3-BN`` plus the shortcut, then ReLU."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        if stride != 1 or inplanes != planes:
            self.shortcut: nn.Module = _ShortcutA(stride, planes - inplanes)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-``depth`` (``depth = 6n + 2``) for ``in_channels x 32 x 32`` images."""

    def __init__(self, num_classes: int = 10, depth: int = 20, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"ResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        widths, layers, inplanes = (16, 32, 64), [], 16
        for stage, planes in enumerate(widths):
            blocks = []
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(BasicBlock(inplanes, planes, stride))
                inplanes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))
